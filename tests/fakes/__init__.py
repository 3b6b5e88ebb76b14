"""Stand-ins for paid vendor APIs: they speak the vendor's documented shapes and check what they get."""

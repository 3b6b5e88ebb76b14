"""Test plumbing shared by every test module: real servers on real ports, a real Redis."""

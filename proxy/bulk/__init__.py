"""`embedgate embed`: a corpus in, vectors out, resumable; over HTTP or with the model in-process."""

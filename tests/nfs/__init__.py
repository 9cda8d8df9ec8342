"""runmaker on real NFS between User-mode Linux guests (see umlnfs.py)."""

"""How an archive is reached from outside: a FUSE-free filesystem view (:mod:`.view`)
shared by the FUSE and WinFsp mounts and the HTTP server (:mod:`.http`), the Python API
(:mod:`.api`) and the fsspec filesystem (:mod:`.fsspec`)."""

"""The archive format, free of I/O: manifests (parse, validate, serialize), how a file is
cut into stripes and shards (layout), and the rules for object names."""

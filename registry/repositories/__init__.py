"""SQL, one class per table family. No commits, no storage, no HTTP."""

//! The embedded store: [`Kv`](super::Kv) on one sled database (one process, one directory).

//! [`Kv`](super::Kv) on an etcd cluster (etcd-client), for several registry replicas.

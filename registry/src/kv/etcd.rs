//! [`Kv`](super::Kv) on an etcd cluster (etcd-client), for several registry replicas.
//! TEMPORARY STUB until the kv-etcd branch lands.
#![allow(dead_code, missing_docs)]
use std::path::PathBuf;
use std::time::Duration;

use super::*;

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub lease_ttl: Duration,
    pub request_timeout: Duration,
}
impl EtcdOptions {
    pub fn from_url(_u: &str) -> Result<Self, KvError> {
        unimplemented!()
    }
}
pub struct EtcdKv;
impl EtcdKv {
    pub async fn connect(_o: EtcdOptions) -> Result<Self, KvError> {
        unimplemented!()
    }
}
#[async_trait::async_trait]
impl Kv for EtcdKv {
    fn describe(&self) -> String {
        unimplemented!()
    }
    async fn get(&self, _key: &str) -> Result<Option<KeyValue>, KvError> {
        unimplemented!()
    }
    async fn range(&self, _p: &str, _s: Option<&str>, _l: usize) -> Result<Vec<KeyValue>, KvError> {
        unimplemented!()
    }
    async fn txn(&self, _t: Txn) -> Result<TxnOutcome, KvError> {
        unimplemented!()
    }
    async fn revision(&self) -> Result<Revision, KvError> {
        unimplemented!()
    }
    async fn watch(&self, _p: &str, _f: Revision) -> Result<WatchStream, KvError> {
        unimplemented!()
    }
    async fn put_session(&self, _k: &str, _v: Vec<u8>) -> Result<(), KvError> {
        unimplemented!()
    }
    async fn elect(&self, _n: &str, _r: &str) -> Result<Leadership, KvError> {
        unimplemented!()
    }
    async fn readiness(&self) -> Result<(), KvError> {
        unimplemented!()
    }
}

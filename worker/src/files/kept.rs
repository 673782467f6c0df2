//! What the two stores (on disk, in Redis) and the HTTP side say to each other: a file's metadata,
//! what a lookup finds, why an upload was not kept, what a guest uses, the bytes read back.

use axum::body::Bytes;
use serde::{Deserialize, Serialize};

/// What is kept beside each file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub guest: String,
    /// Unix milliseconds.
    pub expires: u64,
}

/// What a store knows of an id.
pub(super) enum Lookup {
    Live(Meta),
    Expired,
    Missing,
}

/// Why a complete upload was not kept.
#[derive(Debug)]
pub(super) enum Refused {
    Quota,
    Full,
    Store(std::io::Error),
}

/// Bytes of live files: a guest's, and in all.
#[derive(Debug, Default)]
pub(super) struct Usage {
    pub(super) guest: u64,
    pub(super) total: u64,
}

pub(super) type ByteStream = futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>;

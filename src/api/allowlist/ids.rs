//! An allow-list upload's body, read as a stream: a JSON array of user ids, or one id per
//! line (CSV or plain text). The ids go to the store in chunks of [`CHUNK_IDS`] over a
//! bounded channel, so an upload of a million ids never sits whole in memory: at most a
//! couple of chunks are in flight, plus the reader's buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use poem::{Body, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};
use tokio::sync::mpsc;

use crate::domain::sale::valid_user_id;
use crate::store::AllowlistChunks;

/// Largest upload body: about 1.5 million ids of 40 bytes.
pub const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Ids per chunk: one statement of the store each.
pub const CHUNK_IDS: usize = 5_000;
/// Chunks queued between the reader and the store.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Why an upload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// Not a list of valid user ids; the message names the line or position.
    #[error("{0}")]
    Invalid(String),
    #[error("the upload is larger than {MAX_UPLOAD_BYTES} bytes")]
    TooLarge,
    /// The body could not be read (the client went away).
    #[error("could not read the upload: {0}")]
    Unreadable(String),
    /// The store stopped taking ids (it failed, or refused the upload).
    #[error("the upload was not taken")]
    NotTaken,
}

/// The body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON array of strings.
    Json,
    /// One id per line (`\n` or `\r\n`); blank lines are skipped; no header, no quoting.
    Lines,
}

/// Starts reading `body` in `format`: the receiver for the store, and the reader's own
/// verdict. On any failure the store is sent an error too, so it writes nothing.
pub fn read_ids(
    body: Body,
    format: Format,
) -> (
    AllowlistChunks,
    tokio::task::JoinHandle<Result<(), UploadError>>,
) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let reader = Capped {
        inner: Box::pin(body.into_async_read()),
        left: MAX_UPLOAD_BYTES,
    };
    let task = tokio::spawn(async move {
        let read = match format {
            Format::Lines => read_lines(reader, &tx).await,
            Format::Json => {
                let sender = tx.clone();
                let bridge = tokio_util::io::SyncIoBridge::new(reader);
                tokio::task::spawn_blocking(move || read_json(bridge, &sender))
                    .await
                    .unwrap_or_else(|err| Err(UploadError::Unreadable(err.to_string())))
            }
        };
        if let Err(err) = &read {
            // Nobody may be listening any more: then nothing is written anyway.
            let _ = tx.send(Err(err.to_string())).await;
        }
        read
    });
    (rx, task)
}

/// Reads ids one per line.
async fn read_lines(
    reader: Capped,
    tx: &mpsc::Sender<Result<Vec<String>, String>>,
) -> Result<(), UploadError> {
    let mut lines = BufReader::new(reader).lines();
    let mut chunk = Vec::with_capacity(CHUNK_IDS);
    let mut line_no = 0_u64;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(err) if err.kind() == io::ErrorKind::InvalidData && !is_too_large(&err) => {
                return Err(UploadError::Invalid(format!(
                    "line {}: not UTF-8 text",
                    line_no + 1
                )));
            }
            Err(err) => return Err(io_error(err)),
        };
        line_no += 1;
        let id = line.strip_suffix('\r').unwrap_or(&line);
        if id.is_empty() {
            continue;
        }
        if !valid_user_id(id) {
            return Err(UploadError::Invalid(format!(
                "line {line_no}: not a valid user id (1-128 characters, no control characters)"
            )));
        }
        chunk.push(id.to_string());
        if chunk.len() == CHUNK_IDS {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_IDS));
            tx.send(Ok(full)).await.map_err(|_| UploadError::NotTaken)?;
        }
    }
    if !chunk.is_empty() {
        tx.send(Ok(chunk))
            .await
            .map_err(|_| UploadError::NotTaken)?;
    }
    Ok(())
}

/// Reads a JSON array of ids (on a blocking thread: serde_json reads synchronously).
fn read_json(
    reader: impl io::Read,
    tx: &mpsc::Sender<Result<Vec<String>, String>>,
) -> Result<(), UploadError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut stopped = None;
    let seed = IdsSeed {
        tx,
        stopped: &mut stopped,
    };
    let read = seed.deserialize(&mut de).and_then(|()| de.end());
    if let Some(stopped) = stopped {
        return Err(stopped);
    }
    read.map_err(|err| {
        if err.is_io() {
            io_error(io::Error::from(err))
        } else {
            UploadError::Invalid(format!("not a JSON array of user id strings: {err}"))
        }
    })
}

struct IdsSeed<'a> {
    tx: &'a mpsc::Sender<Result<Vec<String>, String>>,
    /// Why the visitor stopped, when it was not the JSON's fault.
    stopped: &'a mut Option<UploadError>,
}

impl<'de> DeserializeSeed<'de> for IdsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for IdsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of user id strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut chunk = Vec::with_capacity(CHUNK_IDS);
        let mut position = 0_u64;
        while let Some(id) = seq.next_element::<String>()? {
            position += 1;
            if !valid_user_id(&id) {
                *self.stopped = Some(UploadError::Invalid(format!(
                    "item {position}: not a valid user id (1-128 characters, no control \
                     characters)"
                )));
                return Err(A::Error::custom("invalid user id"));
            }
            chunk.push(id);
            if chunk.len() == CHUNK_IDS {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_IDS));
                if self.tx.blocking_send(Ok(full)).is_err() {
                    *self.stopped = Some(UploadError::NotTaken);
                    return Err(A::Error::custom("not taken"));
                }
            }
        }
        if !chunk.is_empty() && self.tx.blocking_send(Ok(chunk)).is_err() {
            *self.stopped = Some(UploadError::NotTaken);
            return Err(A::Error::custom("not taken"));
        }
        Ok(())
    }
}

/// The cap's own error, told apart from the body's.
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "the upload is larger than {MAX_UPLOAD_BYTES} bytes")
    }
}

impl std::error::Error for TooLarge {}

fn is_too_large(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<TooLarge>())
}

fn io_error(err: io::Error) -> UploadError {
    if is_too_large(&err) {
        UploadError::TooLarge
    } else {
        UploadError::Unreadable(err.to_string())
    }
}

/// The body, failing once it passes [`MAX_UPLOAD_BYTES`] (a chunked body declares no
/// length for the edge to check).
struct Capped {
    inner: Pin<Box<dyn AsyncRead + Send + 'static>>,
    left: u64,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            if read > self.left {
                return Poll::Ready(Err(io::Error::other(TooLarge)));
            }
            self.left -= read;
        }
        polled
    }
}

/// Whether a `Content-Type` value names `essence` (parameters such as `charset` aside).
fn names(content_type: &str, essence: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(essence))
}

/// Declares a streamed upload payload of one content type.
macro_rules! streamed_payload {
    ($name:ident, $content_type:literal, $schema:expr) => {
        #[doc = concat!("A streamed `", $content_type, "` upload body.")]
        pub struct $name(pub Body);

        impl Payload for $name {
            const CONTENT_TYPE: &'static str = $content_type;

            fn check_content_type(content_type: &str) -> bool {
                names(content_type, $content_type)
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }
        }

        impl ParsePayload for $name {
            const IS_REQUIRED: bool = true;

            async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
                Ok(Self(
                    <Body as poem::FromRequest>::from_request(request, body).await?,
                ))
            }
        }
    };
}

streamed_payload!(
    JsonIds,
    "application/json",
    MetaSchema {
        items: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(128),
            ..MetaSchema::new("string")
        })))),
        ..MetaSchema::new("array")
    }
);
streamed_payload!(CsvIds, "text/csv", MetaSchema::new("string"));
streamed_payload!(TextIds, "text/plain", MetaSchema::new("string"));

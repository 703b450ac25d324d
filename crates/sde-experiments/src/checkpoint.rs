//! Crash-safe training checkpoints.
//!
//! A checkpoint is one safetensors file: the tensors (model parameters, optimiser moments)
//! plus, in the header's `__metadata__` map, the format version, the configuration
//! fingerprint ([`config_hash`]), the typed metadata as JSON, the tensors' order, and an
//! FNV-1a hash over all of it. One atomic rename publishes everything at once, and
//! [`Checkpoint::load`] refuses a file that is truncated, corrupt, of an unknown format
//! version, or written for another configuration.
//!
//! Beside the checkpoint, [`Checkpoint::save`] writes a human-readable sidecar (the path
//! with extension `json`) holding the configuration hash and the metadata; it is for people
//! only and never read back.

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fnv::FnvHasher;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The format version this build writes and reads.
const FORMAT_VERSION: &str = "1";
const KEY_VERSION: &str = "format_version";
const KEY_CONFIG: &str = "config_hash";
const KEY_META: &str = "meta";
const KEY_NAMES: &str = "tensor_names";
const KEY_HASH: &str = "data_hash";

/// A 64-bit FNV-1a hash of `value`'s JSON serialisation: the fingerprint of a configuration.
///
/// Equal configurations hash equally as long as their serialisation is deterministic (avoid
/// `HashMap` fields, whose order varies). Fails only when `value` cannot be serialised.
pub fn config_hash<C: Serialize + ?Sized>(value: &C) -> Result<u64> {
    let json = serde_json::to_vec(value)
        .map_err(|e| Error::invalid("configuration", e, "must serialise to JSON"))?;
    let mut h = FnvHasher::default();
    h.write(&json);
    Ok(h.finish())
}

/// What a checkpoint file holds.
#[derive(Debug, Clone)]
pub struct Checkpoint<M> {
    /// Named tensors (f32 or f64, any shape, CPU), saved and restored bit-exactly.
    pub tensors: Vec<(String, Tensor)>,
    /// Typed metadata (epoch, curve, RNG state, …), stored as JSON in the header.
    pub meta: M,
    /// The configuration fingerprint this checkpoint belongs to.
    pub config_hash: u64,
}

impl<M: Serialize + DeserializeOwned> Checkpoint<M> {
    /// Writes atomically: the bytes go to a temporary file in the same folder
    /// (`<name>.tmp-<pid>`), which is flushed and fsync'ed, then renamed over `path` (and the
    /// folder fsync'ed where the platform allows). A crash at any point leaves either the old
    /// file or the new one, never a mix. Also writes (atomically, the same way) a
    /// human-readable sidecar `path` with extension `json` holding {config_hash, meta} — for
    /// people; `load` never reads it.
    pub fn save(&self, path: &Path) -> Result<()> {
        if path.extension().is_some_and(|e| e == "json") {
            return Err(err(
                path,
                "a checkpoint's extension must not be `json`, which its sidecar uses",
            ));
        }
        let meta = serde_json::to_string(&self.meta)
            .map_err(|e| err(path, format!("cannot serialise the metadata: {e}")))?;
        // Catch metadata that JSON cannot carry (e.g. a NaN becomes `null`) now, not at load.
        serde_json::from_str::<M>(&meta).map_err(|e| {
            err(
                path,
                format!("the metadata does not survive a JSON round trip: {e}"),
            )
        })?;
        let mut raw = Vec::with_capacity(self.tensors.len());
        let mut seen = std::collections::HashSet::new();
        for (name, tensor) in &self.tensors {
            if !seen.insert(name.as_str()) || name == "__metadata__" {
                return Err(err(
                    path,
                    format!("tensor name `{name}` is repeated or reserved"),
                ));
            }
            let (dtype, bytes) = tensor_bytes(tensor)
                .map_err(|e| err(path, format!("cannot read tensor `{name}`: {e}")))?;
            raw.push((name.as_str(), dtype, tensor.dims().to_vec(), bytes));
        }
        let names: Vec<&str> = raw.iter().map(|r| r.0).collect();
        let names = serde_json::to_string(&names)
            .map_err(|e| err(path, format!("cannot serialise the tensor names: {e}")))?;
        let config = format!("{:016x}", self.config_hash);
        let views = raw
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                Ok((*name, TensorView::new(*dtype, shape.clone(), bytes)?))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| err(path, format!("cannot lay out the tensors: {e}")))?;
        let hash = data_hash(&config, &meta, views.iter().map(|(n, v)| (*n, v)));
        let header = HashMap::from([
            (KEY_VERSION.to_string(), FORMAT_VERSION.to_string()),
            (KEY_CONFIG.to_string(), config.clone()),
            (KEY_META.to_string(), meta),
            (KEY_NAMES.to_string(), names),
            (KEY_HASH.to_string(), format!("{hash:016x}")),
        ]);
        let bytes = safetensors::serialize(views, Some(header))
            .map_err(|e| err(path, format!("cannot serialise: {e}")))?;
        write_atomic(path, &bytes).map_err(|e| err(path, format!("cannot write: {e}")))?;

        let sidecar = path.with_extension("json");
        let human = serde_json::json!({ "config_hash": config, "meta": &self.meta });
        let human = serde_json::to_vec_pretty(&human)
            .map_err(|e| err(&sidecar, format!("cannot serialise the sidecar: {e}")))?;
        write_atomic(&sidecar, &human).map_err(|e| err(&sidecar, format!("cannot write: {e}")))
    }

    /// Reads `path`; refuses with a clear error (naming the path) when the file is missing,
    /// truncated or corrupt (safetensors parse error, or a data hash mismatch: an FNV-1a hash
    /// of all tensor names, dtypes, shapes and bytes and of the meta JSON is stored in the
    /// metadata and verified), when its format version is unknown, or when its config_hash
    /// differs from `expected_config_hash` (the message gives both hashes in hex and says the
    /// configuration changed since the checkpoint was written).
    pub fn load(path: &Path, expected_config_hash: u64, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(path, format!("truncated or corrupt file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(path, format!("truncated or corrupt file: {e}")))?;
        let header = header.metadata().as_ref();
        let field = |key: &str| {
            header.and_then(|h| h.get(key)).ok_or_else(|| {
                err(
                    path,
                    format!("not a checkpoint (its header has no `{key}`)"),
                )
            })
        };
        let version = field(KEY_VERSION)?;
        if version != FORMAT_VERSION {
            return Err(err(path, format!("unknown format version {version:?} (this build reads version {FORMAT_VERSION})")));
        }
        let (config, meta, names, stored_hash) = (
            field(KEY_CONFIG)?,
            field(KEY_META)?,
            field(KEY_NAMES)?,
            field(KEY_HASH)?,
        );
        let corrupt = |what: &str| err(path, format!("corrupt file: {what}"));
        let names: Vec<String> =
            serde_json::from_str(names).map_err(|_| corrupt("unreadable tensor names"))?;
        if names.len() != file.len() {
            return Err(corrupt("the tensor list does not match the tensors stored"));
        }
        let views = names
            .iter()
            .map(|n| Ok((n.as_str(), file.tensor(n)?)))
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| corrupt(&e.to_string()))?;
        let hash = data_hash(config, meta, views.iter().map(|(n, v)| (*n, v)));
        if format!("{hash:016x}") != *stored_hash {
            return Err(corrupt("its data hash does not match its contents"));
        }
        let config_hash =
            u64::from_str_radix(config, 16).map_err(|_| corrupt("unreadable config hash"))?;
        if config_hash != expected_config_hash {
            return Err(err(path, format!("the configuration changed since the checkpoint was written (checkpoint config hash {config_hash:016x}, current config hash {expected_config_hash:016x})")));
        }
        let meta = serde_json::from_str(meta)
            .map_err(|e| err(path, format!("cannot read its metadata: {e}")))?;
        let tensors = views
            .into_iter()
            .map(|(name, view)| {
                let tensor = tensor_from(&view, device)
                    .map_err(|e| err(path, format!("cannot restore tensor `{name}`: {e}")))?;
                Ok((name.to_string(), tensor))
            })
            .collect::<Result<_>>()?;
        Ok(Checkpoint {
            tensors,
            meta,
            config_hash,
        })
    }

    /// The tensor named `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| err(Path::new("(loaded)"), format!("no tensor named `{name}`")))
    }
}

fn err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// FNV-1a over the config hash, the meta JSON and every tensor's name, dtype, shape and
/// bytes, each field length-prefixed so that no two different contents feed the same stream.
fn data_hash<'a>(
    config: &str,
    meta: &str,
    tensors: impl Iterator<Item = (&'a str, &'a TensorView<'a>)>,
) -> u64 {
    let mut h = FnvHasher::default();
    let mut field = |bytes: &[u8]| {
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(bytes);
    };
    field(config.as_bytes());
    field(meta.as_bytes());
    for (name, view) in tensors {
        field(name.as_bytes());
        field(view.dtype().to_string().as_bytes());
        let shape: Vec<u8> = view
            .shape()
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&shape);
        field(view.data());
    }
    h.finish()
}

/// A tensor's dtype and little-endian bytes (f32 and f64 only).
fn tensor_bytes(t: &Tensor) -> candle_core::Result<(Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (
            Dtype::F32,
            flat.to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            flat.to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => candle_core::bail!("dtype {other:?} is not supported (f32 and f64 are)"),
    })
}

/// The tensor a stored view holds, on `device`.
fn tensor_from(view: &TensorView<'_>, device: &Device) -> candle_core::Result<Tensor> {
    let shape = view.shape().to_vec();
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(c);
                    f32::from_le_bytes(b)
                })
                .collect();
            Tensor::from_vec(v, shape, device)
        }
        Dtype::F64 => {
            let v: Vec<f64> = data
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b)
                })
                .collect();
            Tensor::from_vec(v, shape, device)
        }
        other => candle_core::bail!("stored dtype {other} is not supported (f32 and f64 are)"),
    }
}

/// Writes `bytes` to `path` through a fsync'ed temporary file renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    #[cfg(unix)]
    {
        // Persist the rename. Some filesystems refuse to fsync a folder; the file itself is
        // already durable and in place, so such a refusal is not an error.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

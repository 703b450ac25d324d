//! Checkpoints: bit-exact round trips, refusal of bad files, atomic replacement, stable
//! configuration hashes.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sde_experiments::{config_hash, Checkpoint, Error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    epoch: usize,
    loss: f64,
    tiny: f64,
    neg_zero: f64,
    curve: Vec<f64>,
    rng: [u64; 2],
}

fn meta() -> Meta {
    Meta {
        epoch: 7,
        loss: 0.1 + 0.2,
        tiny: 1e-300,
        neg_zero: -0.0,
        curve: vec![1.0 / 3.0, f64::MAX, f64::MIN_POSITIVE, 5e-324, -2.5],
        rng: [u64::MAX, 12345],
    }
}

/// A fresh, empty folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("sde-ckpt-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample(cfg: u64) -> anyhow::Result<Checkpoint<Meta>> {
    let dev = Device::Cpu;
    let f32s: Vec<f32> = (0..24).map(|i| (i as f32).sin() / 7.0 - 1e-30).collect();
    let f64s: Vec<f64> = (0..24)
        .map(|i| (i as f64).cos() * 1e-200 + 0.1 * i as f64)
        .collect();
    Ok(Checkpoint {
        tensors: vec![
            ("w".into(), Tensor::from_vec(f32s.clone(), (2, 3, 4), &dev)?),
            ("b".into(), Tensor::from_vec(f64s[..5].to_vec(), 5, &dev)?),
            ("scalar".into(), Tensor::new(-0.0f64, &dev)?),
            // Non-contiguous on purpose: saved as its logical (transposed) contents.
            ("m.t".into(), Tensor::from_vec(f64s, (4, 6), &dev)?.t()?),
            (
                "empty".into(),
                Tensor::zeros((0, 3), candle_core::DType::F32, &dev)?,
            ),
            (
                "special".into(),
                Tensor::new(
                    &[f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MIN_POSITIVE],
                    &dev,
                )?,
            ),
        ],
        meta: meta(),
        config_hash: cfg,
    })
}

fn bits(t: &Tensor) -> anyhow::Result<Vec<u64>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        candle_core::DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
        _ => flat.to_vec1::<f64>()?.iter().map(|v| v.to_bits()).collect(),
    })
}

fn tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn round_trip_is_bit_exact() -> anyhow::Result<()> {
    let dir = TempDir::new("roundtrip");
    let path = dir.file("ckpt.safetensors");
    let saved = sample(0xdead_beef)?;
    saved.save(&path)?;
    let loaded = Checkpoint::<Meta>::load(&path, 0xdead_beef, &Device::Cpu)?;
    assert_eq!(loaded.config_hash, 0xdead_beef);
    let names = |c: &Checkpoint<Meta>| c.tensors.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&loaded), names(&saved));
    for (name, t) in &saved.tensors {
        let back = loaded.tensor(name)?;
        assert_eq!(back.dtype(), t.dtype(), "{name}");
        assert_eq!(back.dims(), t.dims(), "{name}");
        assert_eq!(bits(back)?, bits(t)?, "{name}");
    }
    // Metadata: compare bit patterns too, so -0.0 and 0.0 are told apart.
    let m = &loaded.meta;
    assert_eq!(m, &saved.meta);
    assert_eq!(m.loss.to_bits(), (0.1f64 + 0.2).to_bits());
    assert_eq!(m.tiny.to_bits(), 1e-300f64.to_bits());
    assert_eq!(m.neg_zero.to_bits(), (-0.0f64).to_bits());
    let curve_bits = |c: &[f64]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(curve_bits(&m.curve), curve_bits(&saved.meta.curve));
    // The human-readable sidecar exists and holds the metadata.
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.file("ckpt.json"))?)?;
    assert_eq!(sidecar["meta"]["epoch"], 7);
    assert!(loaded
        .tensor("nope")
        .is_err_and(|e| e.to_string().contains("nope")));
    Ok(())
}

#[test]
fn config_mismatch_is_refused() -> anyhow::Result<()> {
    let dir = TempDir::new("mismatch");
    let path = dir.file("ckpt.safetensors");
    sample(0x1234)?.save(&path)?;
    let e = Checkpoint::<Meta>::load(&path, 0xabcd, &Device::Cpu).expect_err("must refuse");
    let msg = e.to_string();
    assert!(matches!(e, Error::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains("0000000000001234") && msg.contains("000000000000abcd"),
        "{msg}"
    );
    assert!(msg.contains("configuration changed"), "{msg}");
    assert!(msg.contains("ckpt.safetensors"), "{msg}");
    Ok(())
}

#[test]
fn missing_truncated_flipped_and_garbage_files_are_refused() -> anyhow::Result<()> {
    let dir = TempDir::new("bad");
    let path = dir.file("ckpt.safetensors");
    let load = |p: &Path| Checkpoint::<Meta>::load(p, 7, &Device::Cpu);

    let e = load(&dir.file("missing.safetensors")).expect_err("missing");
    assert!(e.to_string().contains("missing.safetensors"), "{e}");

    sample(7)?.save(&path)?;
    let good = std::fs::read(&path)?;
    load(&path)?;

    std::fs::write(&path, &good[..good.len() / 2])?;
    let e = load(&path).expect_err("truncated");
    assert!(e.to_string().contains("ckpt.safetensors"), "{e}");

    // Flip one byte of tensor data (the data follows the header at the end of the file).
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&path, &flipped)?;
    let e = load(&path).expect_err("flipped");
    assert!(e.to_string().contains("hash"), "{e}");

    for garbage in [
        &b""[..],
        b"hello, world",
        &[0xffu8; 4096][..],
        &[0u8; 64][..],
    ] {
        std::fs::write(&path, garbage)?;
        let e = load(&path).expect_err("garbage");
        assert!(e.to_string().contains("ckpt.safetensors"), "{e}");
    }
    // A valid safetensors file that is not a checkpoint.
    let plain =
        safetensors::serialize(Vec::<(&str, safetensors::tensor::TensorView)>::new(), None)?;
    std::fs::write(&path, plain)?;
    assert!(load(&path).is_err());
    Ok(())
}

#[test]
fn save_is_atomic_and_replaces() -> anyhow::Result<()> {
    let dir = TempDir::new("atomic");
    let path = dir.file("ckpt.safetensors");
    // A stale temp file from an "earlier crash" (another pid, and this pid's own name).
    std::fs::write(
        dir.file("ckpt.safetensors.tmp-999999"),
        b"half-written junk",
    )?;
    sample(1)?.save(&path)?;
    let mut second = sample(1)?;
    second.meta.epoch = 8;
    second.tensors.truncate(2);
    second.save(&path)?;
    let stale = tmp_files(&dir.0);
    assert_eq!(stale, vec!["ckpt.safetensors.tmp-999999".to_string()]);
    let loaded = Checkpoint::<Meta>::load(&path, 1, &Device::Cpu)?;
    assert_eq!(loaded.meta.epoch, 8);
    assert_eq!(loaded.tensors.len(), 2);

    std::fs::remove_file(dir.file("ckpt.safetensors.tmp-999999"))?;
    sample(1)?.save(&path)?;
    assert!(tmp_files(&dir.0).is_empty());
    Ok(())
}

#[test]
fn unsupported_inputs_are_refused_at_save() -> anyhow::Result<()> {
    let dir = TempDir::new("refuse");
    let mut c = sample(1)?;
    c.meta.loss = f64::NAN; // JSON cannot carry it
    assert!(c.save(&dir.file("a.safetensors")).is_err());
    let mut c = sample(1)?;
    c.tensors
        .push(("w".into(), Tensor::new(1f32, &Device::Cpu)?));
    assert!(c.save(&dir.file("b.safetensors")).is_err());
    assert!(sample(1)?.save(&dir.file("c.json")).is_err());
    assert!(tmp_files(&dir.0).is_empty());
    Ok(())
}

#[derive(Serialize)]
struct Config {
    lr: f64,
    epochs: u32,
    name: &'static str,
}

#[test]
fn config_hash_is_stable() -> anyhow::Result<()> {
    let a = Config {
        lr: 0.001,
        epochs: 10,
        name: "ode",
    };
    let same = Config {
        lr: 0.001,
        epochs: 10,
        name: "ode",
    };
    let other = Config {
        lr: 0.001,
        epochs: 11,
        name: "ode",
    };
    assert_eq!(config_hash(&a)?, config_hash(&same)?);
    assert_ne!(config_hash(&a)?, config_hash(&other)?);
    // FNV-1a 64 of `{"lr":0.001,"epochs":10,"name":"ode"}`, computed independently: pinned
    // so that the fingerprint cannot silently change between releases.
    assert_eq!(config_hash(&a)?, 0x1685_1cb5_4c34_a19e);
    // Unsized values hash too.
    assert_eq!(config_hash("x")?, config_hash(&"x")?);
    Ok(())
}

//! Bad input gives a typed error, never a panic.

mod common;

use bitorch_inference::{Checkpoint, Error, LoadOptions, Pipeline, Stage};
use candle_core::{quantized::GgmlDType, DType, Device};
use common::*;
use std::path::Path;

fn tiny_gguf(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tiny.gguf");
    let tiny = Tiny { hidden: 64, inter: 128, ..Tiny::default() };
    write_gguf(&path, &tiny, 3, GgmlDType::Q8_0);
    path
}

fn load_all(path: &Path) -> Result<Pipeline, Error> {
    let ckpt = Checkpoint::open(path)?;
    Pipeline::load_split(&ckpt, 1, &LoadOptions::default())
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    assert!(load_all(&path).is_ok());
    // Cut anywhere: in the magic, the metadata, the tensor index or the weights.
    // (The writer pads each tensor to 32 bytes, so the last 31 bytes may be padding.)
    let cuts = [0, 3, 10, 40, 200, bytes.len() / 3, bytes.len() / 2, bytes.len() - 33];
    for cut in cuts {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        match load_all(&p) {
            Err(Error::BadGguf { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("cut at {cut}: expected BadGguf, got {other:?}"),
        }
    }
}

#[test]
fn corrupt_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let p = dir.path().join("bad.gguf");
    // Not GGUF at all.
    std::fs::write(&p, b"this is not a model file at all, just text\n").unwrap();
    assert!(matches!(load_all(&p), Err(Error::BadGguf { .. })));
    // Corrupt bytes all over the header: every outcome must be an error or a working model.
    let mut seed = 12345u64;
    for i in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..1 + i % 4 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % 2048.min(b.len());
            b[at] ^= 1 << ((seed >> 29) % 8);
        }
        std::fs::write(&p, &b).unwrap();
        let r = std::panic::catch_unwind(|| load_all(&p).map(|_| ()));
        assert!(r.is_ok(), "corruption {i} panicked");
    }
    // Huge counts in the header.
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(load_all(&p), Err(Error::BadGguf { .. })));
}

#[test]
fn real_model_truncated() {
    let src = real_model();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("truncated.gguf");
    let len = std::fs::metadata(&src).unwrap().len();
    let mut f = std::fs::File::open(&src).unwrap();
    let mut out = std::fs::File::create(&p).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut f, len / 2), &mut out).unwrap();
    match Checkpoint::open(&p) {
        Err(Error::BadGguf { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("expected BadGguf, got {other:?}"),
    }
}

#[test]
fn safetensors_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(dir.path(), &Tiny::default(), 1, DType::F32, Some("layers.2.mlp.up_proj"));
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    // Stages that do not need it load fine: a stage reads only its own layers.
    Stage::load(&ckpt, 0..2, &LoadOptions::default()).unwrap();
    Stage::load(&ckpt, 3..4, &LoadOptions::default()).unwrap();
    match Stage::load(&ckpt, 2..4, &LoadOptions::default()) {
        Err(Error::MissingTensor { name }) => assert_eq!(name, "model.layers.2.mlp.up_proj.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // A header that lies about sizes, or no config.json.
    let st = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&st, &bytes).unwrap();
    assert!(matches!(Checkpoint::open(dir.path()), Err(Error::BadSafetensors { .. })));
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(matches!(Checkpoint::open(dir.path()), Err(Error::Io { .. })));
}

#[test]
fn stage_range_outside_model() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(dir.path(), &Tiny::default(), 1, DType::F32, None);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    for r in [0..5, 3..3, 4..6, 7..9] {
        let e = Stage::load(&ckpt, r.clone(), &LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::LayerRange { num_layers: 4, .. }), "{r:?}: {e}");
    }
    assert!(matches!(
        Pipeline::load(&ckpt, &[0..2, 3..4], &LoadOptions::default()),
        Err(Error::LayerRange { .. })
    ));
    assert!(matches!(
        Pipeline::load_split(&ckpt, 5, &LoadOptions::default()),
        Err(Error::StageCount { .. })
    ));
    let gguf = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(tiny_gguf(gguf.path())).unwrap();
    assert!(matches!(
        Stage::load(&ckpt, 2..9, &LoadOptions::default()),
        Err(Error::LayerRange { .. })
    ));
}

#[test]
fn prompt_longer_than_context() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny { context: 16, ..Tiny::default() };
    write_safetensors(dir.path(), &tiny, 1, DType::F32, None);
    let p = load_all(dir.path()).unwrap();
    let mut s = p.new_session(false);
    let long: Vec<u32> = (0..17).collect();
    let e = p.step(&mut s, &long).unwrap_err();
    assert!(matches!(e, Error::PromptTooLong { tokens: 17, limit: 16 }), "{e}");
    assert!(e.to_string().contains("shorten"));
    // Filling the context exactly works; one more position is a clear error.
    let mut s = p.new_session(false);
    p.step(&mut s, &long[..15]).unwrap();
    p.step(&mut s, &[1]).unwrap();
    assert!(matches!(p.step(&mut s, &[1]), Err(Error::ContextFull { pos: 16, .. })));
    // Token ids outside the vocabulary, and wrong inputs to a stage.
    let mut s = p.new_session(false);
    assert!(matches!(p.step(&mut s, &[500]), Err(Error::StageInput(_))));
    let stage = &p.stages()[0];
    let mut cache = stage.new_cache();
    let x = candle_core::Tensor::zeros((1, 2, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(stage.forward_layers(&x, 0, &mut cache), Err(Error::StageInput(_))));
    let x = candle_core::Tensor::zeros((1, 2, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(stage.forward_layers(&x, 3, &mut cache), Err(Error::StageInput(_))));
}

#[test]
fn hostile_safetensors_bundle_prefixes() {
    use bitorch_inference::checkpoint::{read_bundle_index, BUNDLE_MAGIC};
    let label = Path::new("bundle");
    let prefix = |shards: u32, config: u64, tokenizer: u64, table: &[(u64, u64)]| {
        let mut b = BUNDLE_MAGIC.to_vec();
        b.extend_from_slice(&shards.to_le_bytes());
        b.extend_from_slice(&config.to_le_bytes());
        b.extend_from_slice(&tokenizer.to_le_bytes());
        for (h, d) in table {
            b.extend_from_slice(&h.to_le_bytes());
            b.extend_from_slice(&d.to_le_bytes());
        }
        b
    };
    // Each is refused before anything it asks for is allocated.
    for (bytes, why) in [
        ([&b"GGUF\0\0\0\x03"[..], &[0u8; 40]].concat(), "not a safetensors bundle"),
        (prefix(0, 2, 0, &[]), "0 shards"),
        (prefix(u32::MAX, 2, 0, &[]), "shards"),
        (prefix(1, u64::MAX, 0, &[(2, 0)]), "too large"),
        (prefix(1, 2, u64::MAX, &[(2, 0)]), "too large"),
        (prefix(1, 2, 0, &[(u64::MAX, 0)]), "shard header of"),
        (prefix(1, 2, 0, &[(2, 0)]), "cut short"),
    ] {
        match read_bundle_index(&mut &bytes[..], label) {
            Err(Error::BadSafetensors { reason, .. }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // A tensor past its shard's data.
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut b = prefix(1, 2, 0, &[(header.len() as u64, 8)]);
    b.extend_from_slice(b"{}");
    b.extend_from_slice(header);
    match read_bundle_index(&mut &b[..], label) {
        Err(Error::BadSafetensors { reason, .. }) => {
            assert!(reason.contains("inconsistent offsets"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

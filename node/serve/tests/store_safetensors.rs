//! Safetensors models in the content store: a model directory (one file, or shards named by
//! `model.safetensors.index.json`) is split into one chunk per layer and a shared chunk, and
//! a pipeline loaded from the chunks computes exactly what one loaded from the directory does.

use bitorch_inference::{Checkpoint, LoadOptions, Pipeline};
use bitorch_runtime::models::ChunkKind;
use bitorch_serve::Store;
use bitorch_test_support::tiny::{hf_config, hf_tensors, write_safetensors, Tiny};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

const PROMPT: [u32; 6] = [1, 5, 9, 33, 2, 70];

/// The last position's logits of `PROMPT` through `ckpt` split into `stages` stages.
fn logits(ckpt: &Checkpoint, stages: usize) -> Vec<f32> {
    let p = Pipeline::load_split(ckpt, stages, &LoadOptions::default()).unwrap();
    let mut s = p.new_session(false);
    p.step(&mut s, &PROMPT).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Writes `tiny` as two shards and an index (and a stray file the index does not name).
fn write_sharded(dir: &Path, tiny: &Tiny, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut first, mut second): (HashMap<String, Tensor>, HashMap<String, Tensor>) =
        (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, t) in hf_tensors(tiny, seed) {
        let early = name.starts_with("model.embed") || name.starts_with("model.layers.0.");
        let file = if early {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), file.into());
        if early {
            first.insert(name, t)
        } else {
            second.insert(name, t)
        };
    }
    candle_core::safetensors::save(&first, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), hf_config(tiny)).unwrap();
    // Not a shard of this model (Mistral's repositories ship one like it): ignored.
    std::fs::write(dir.join("consolidated.safetensors"), b"not part of the model").unwrap();
}

#[test]
fn a_safetensors_model_is_split_per_layer_and_its_stages_load_from_the_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny::default();
    let one = dir.path().join("one");
    write_safetensors(&one, &tiny, 5, DType::F32, None);
    let want = logits(&Checkpoint::open(&one).unwrap(), 1);

    let store = Store::open(dir.path().join("store")).unwrap();
    let imported = store.import(&one, Some("tiny")).unwrap();
    let m = &imported.manifest;
    assert_eq!(m.layer_count as usize, tiny.layers);
    assert_eq!(m.chunks.len(), tiny.layers + 1);
    assert_eq!(m.chunks[0].kind, ChunkKind::Shared);
    for (l, c) in m.chunks[1..].iter().enumerate() {
        let l = l as u32;
        assert_eq!(c.kind, ChunkKind::Layers { start: l, end: l + 1 });
        assert!(c.size > 0);
    }
    // Stages load from the chunks and compute exactly what the directory gives.
    let ckpt = store.checkpoint(m).unwrap();
    assert!(matches!(ckpt, Checkpoint::Safetensors(_)));
    for stages in [1, 2, tiny.layers] {
        assert_eq!(logits(&ckpt, stages), want, "{stages} stages from the store");
    }
    // Imported again: the same id, every chunk reused.
    let again = store.import(&one, Some("other label")).unwrap();
    assert_eq!((again.id, again.reused_chunks), (imported.id, m.chunks.len()));

    // The same weights as shards with an index: the index's files only, the same numbers.
    let sharded = dir.path().join("sharded");
    write_sharded(&sharded, &tiny, 5);
    assert_eq!(logits(&Checkpoint::open(&sharded).unwrap(), 1), want);
    let from_shards = store.import(&sharded, None).unwrap();
    assert_eq!(from_shards.manifest.chunks.len(), tiny.layers + 1);
    let ckpt = store.checkpoint(&from_shards.manifest).unwrap();
    assert_eq!(logits(&ckpt, 2), want);

    // Without a layer's chunk, the stages that need it fail to load, saying so; the others
    // load.
    let last = m.chunks.last().unwrap();
    let chunk = store.dir().join("chunks").join(hex::encode(last.root.as_bytes()));
    std::fs::remove_file(chunk).unwrap();
    let ckpt = store.checkpoint(m).unwrap();
    let n = tiny.layers;
    let options = LoadOptions::default();
    assert!(bitorch_inference::Stage::load(&ckpt, 0..n - 1, &options).is_ok());
    let err = bitorch_inference::Stage::load(&ckpt, n - 1..n, &options).unwrap_err();
    assert!(err.to_string().contains("not in the store"), "{err}");
}

#[test]
fn a_directory_that_is_not_a_model_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(store.import(&empty, None).is_err());
    // A shard whose header claims more bytes than the file has.
    let bad = dir.path().join("bad");
    write_safetensors(&bad, &Tiny::default(), 1, DType::F32, None);
    let path = bad.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).unwrap();
    let err = store.import(&bad, None).unwrap_err();
    assert!(err.to_string().contains("inconsistent offsets"), "{err}");
    assert!(store.models().unwrap().is_empty());
}

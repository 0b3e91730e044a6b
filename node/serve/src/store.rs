//! The content store: models split into verified, content-addressed chunks under the node's
//! base path, and the stages loaded straight from them.
//!
//! # Chunks
//! A GGUF model is split along its tensors: one chunk per transformer layer (the byte ranges
//! of its `blk.N.*` tensors) and one shared chunk with everything else (the header with the
//! metadata and tokenizer, embeddings, final norm, output head). Every byte of the file is in
//! exactly one chunk, in file order, so the layout is a function of the header alone
//! ([`gguf_layout`]) and a stage is read from the chunks as if they were the file
//! ([`Store::checkpoint`]), without assembling it again. Each chunk is split into pieces of
//! [`PIECE_SIZE`] and named by the Merkle root of their blake2-256 hashes (the manifest's
//! `root`).
//!
//! [`PIECE_SIZE`] is 256 KiB: a piece is the unit a peer sends and a puller verifies before
//! writing. BitTorrent v2 hashes 16 KiB leaves but transfers larger pieces; HF Xet uses 64 KiB
//! chunks for deduplication, which we do not need. A layer of a small model (SmolLM2-135M,
//! Q4_1) is 2.2 MB: 9 pieces, enough to spread one layer over several seeders; the whole model
//! is about 400 pieces, so the per-request cost (a stream, a hash, a bitmap write) is paid
//! rarely; and a piece takes a quarter of a second at 1 MB/s, so re-asking a slow peer's piece
//! elsewhere costs little.
//!
//! # On disk, under `<base>/models/`
//! - `manifests/<model id>`: the manifest (SCALE), named by [`Manifest::id`];
//! - `chunks/<root>` and `chunks/<root>.hashes`: a complete chunk and its piece hashes;
//! - `partial/<root>.data`, `.hashes`, `.bitmap`: a chunk being pulled. The bitmap has one
//!   byte per piece, written after the piece's bytes; on reopening, every piece it marks is
//!   hashed again (a crash between the two writes, or a torn write, is found then), so a
//!   restarted pull refetches nothing that was verified and written.
//!
//! Files are replaced by renaming, so a crash leaves either the old or the new one.
//!
//! # Safetensors
//! A safetensors model (a directory with `config.json`, `tokenizer.json` and `model.safetensors`,
//! or shards named by `model.safetensors.index.json`) is imported as one stream of bytes, a
//! [`SafetensorsBundle`]: a prefix with the config, the tokenizer and every shard's header,
//! then the shards' tensor data. It is split the same way ([`safetensors_layout`]): the
//! tensors `model.layers.N.*` to layer `N`'s chunk, the prefix and every other tensor to the
//! shared chunk, so the shared chunk starts with the prefix and the layout is again a function
//! of the shared chunk alone.

use bitorch_inference::checkpoint::{
    read_bundle_index, read_gguf_header, ByteSource, GgufCheckpoint, ReadSeek, SafetensorsBundle,
    BUNDLE_MAGIC,
};
use bitorch_inference::{Checkpoint, Config};
use bitorch_primitives::merkle::merkle_root;
use bitorch_primitives::{blake2_256, H256};
use bitorch_runtime::models::{self, Chunk, ChunkKind, HyperParams, Manifest, ModelId};
use parity_scale_codec::{Decode, Encode};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Size of a piece of a chunk (see the module's documentation for why).
pub const PIECE_SIZE: u32 = 256 * 1024;
/// Largest manifest file read from the store.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store or of the model cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The model file is not a GGUF model we can split.
    #[error("{}: {reason}", path.display())]
    BadModel {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The manifest made from a model breaks the chain's rules.
    #[error("the model's manifest is invalid: {0}")]
    Manifest(String),
    /// No model with this id in the store.
    #[error("no model {0} in the store")]
    UnknownModel(ModelId),
    /// A manifest file of the store does not decode.
    #[error("the stored manifest {} is corrupt: {reason}", path.display())]
    CorruptManifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A chunk a stage needs is not complete in the store.
    #[error("chunk {root:?} ({what}) is not in the store; pull it first")]
    MissingChunk {
        /// The chunk.
        root: H256,
        /// What it holds.
        what: String,
    },
    /// Piece hashes that do not hash to the chunk's root.
    #[error("piece hashes of chunk {root:?}: {reason}")]
    BadHashes {
        /// The chunk.
        root: H256,
        /// What was wrong.
        reason: String,
    },
    /// A piece that is not the one the chunk's hashes name.
    #[error("piece {index} of chunk {root:?}: {reason}")]
    BadPiece {
        /// The chunk.
        root: H256,
        /// The piece.
        index: u32,
        /// What was wrong.
        reason: &'static str,
    },
    /// The model's header does not describe the chunks of its manifest.
    #[error("the model's header does not match its manifest: {0}")]
    Layout(String),
    /// The model cannot be loaded from its chunks.
    #[error(transparent)]
    Inference(#[from] bitorch_inference::Error),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Which chunk a byte range of the model belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The shared chunk.
    Shared,
    /// The chunk of this transformer layer.
    Layer(u32),
}

/// A byte range of the model file and the chunk it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the file.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// Its chunk.
    pub part: Part,
}

/// Splits a GGUF file of `file_len` bytes with this header into segments, in file order:
/// the header and every tensor that is not a layer's go to [`Part::Shared`], the tensors
/// `blk.N.*` to [`Part::Layer`]`(N)`; each tensor's range runs to the next tensor's start
/// (alignment padding included), the last to the end of the file. Adjacent ranges of one
/// chunk are merged. Fails unless every layer `0..layers` has bytes.
pub fn gguf_layout(
    content: &bitorch_inference::checkpoint::gguf_file::Content,
    file_len: u64,
    layers: u32,
) -> Result<Vec<Segment>, String> {
    let data = content.tensor_data_offset;
    let mut starts = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let part = part_by_name(name, "blk.", layers)?;
        let start = data
            .checked_add(info.offset)
            .filter(|s| *s <= file_len)
            .ok_or_else(|| format!("tensor '{name}' starts past the end of the file"))?;
        starts.push((start, part, name.as_str()));
    }
    split(starts, file_len, layers)
}

/// Splits a [`SafetensorsBundle`] of `len` bytes whose tensors lie at `tensors` (name, start,
/// length) into segments, as [`gguf_layout`] does a GGUF file: the prefix and every tensor that
/// is not a layer's to [`Part::Shared`], the tensors `model.layers.N.*` to [`Part::Layer`]`(N)`.
pub fn safetensors_layout(
    tensors: &[(String, u64, u64)],
    len: u64,
    layers: u32,
) -> Result<Vec<Segment>, String> {
    let mut starts = Vec::with_capacity(tensors.len());
    for (name, start, _) in tensors {
        if *start > len {
            return Err(format!("tensor '{name}' starts past the end of the bundle"));
        }
        starts.push((*start, part_by_name(name, "model.layers.", layers)?, name.as_str()));
    }
    split(starts, len, layers)
}

/// The chunk of the tensor `name`: layer `N`'s for `{layer_prefix}N.…`, else the shared one.
fn part_by_name(name: &str, layer_prefix: &str, layers: u32) -> Result<Part, String> {
    let Some(rest) = name.strip_prefix(layer_prefix) else { return Ok(Part::Shared) };
    let n: u32 = rest
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("tensor '{name}' has no layer number"))?;
    if n >= layers {
        return Err(format!("tensor '{name}' is past the model's {layers} layers"));
    }
    Ok(Part::Layer(n))
}

/// Segments from the tensors' starts: everything before the first tensor is shared; each
/// tensor's range runs to the next one's start, the last to `file_len`; adjacent ranges of
/// one chunk merged. Fails unless every layer has bytes.
fn split(
    mut starts: Vec<(u64, Part, &str)>,
    file_len: u64,
    layers: u32,
) -> Result<Vec<Segment>, String> {
    starts.sort();
    let mut segments: Vec<Segment> = Vec::with_capacity(starts.len() + 1);
    let mut push = |start: u64, end: u64, part: Part| {
        if end <= start {
            return;
        }
        match segments.last_mut() {
            Some(last) if last.part == part && last.start + last.len == start => {
                last.len += end - start
            }
            _ => segments.push(Segment { start, len: end - start, part }),
        }
    };
    let first = starts.first().map_or(file_len, |s| s.0);
    push(0, first, Part::Shared);
    for (i, &(start, part, name)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(file_len, |s| s.0);
        if i + 1 < starts.len() && end == start {
            return Err(format!("tensor '{name}' shares its offset with another"));
        }
        push(start, end, part);
    }
    for l in 0..layers {
        if !segments.iter().any(|s| s.part == Part::Layer(l)) {
            return Err(format!("layer {l} has no tensors"));
        }
    }
    Ok(segments)
}

/// The parts of a manifest's chunks, in the order [`Store::import_gguf`] writes them: the
/// shared chunk, then one per layer.
fn part_of(kind: &ChunkKind) -> Option<Part> {
    match kind {
        ChunkKind::Shared => Some(Part::Shared),
        ChunkKind::Layers { start, end } if end - start == 1 => Some(Part::Layer(*start)),
        _ => None,
    }
}

/// Number of pieces of a chunk.
pub fn piece_count(chunk: &Chunk) -> u32 {
    u32::try_from(chunk.size.div_ceil(u64::from(chunk.piece_size.max(1)))).unwrap_or(u32::MAX)
}

/// Length of piece `index` of a chunk.
pub fn piece_len(chunk: &Chunk, index: u32) -> u64 {
    let start = u64::from(index) * u64::from(chunk.piece_size);
    chunk.size.saturating_sub(start).min(u64::from(chunk.piece_size))
}

/// What [`Store::import_gguf`] did.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The model's id.
    pub id: ModelId,
    /// Its manifest.
    pub manifest: Manifest,
    /// Bytes read from the file.
    pub bytes: u64,
    /// Chunks that were already in the store (the same content, from this or another model).
    pub reused_chunks: usize,
}

/// A stored model and how much of it the store holds.
#[derive(Clone, Debug)]
pub struct StoredModel {
    /// Its id.
    pub id: ModelId,
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether each chunk of the manifest is complete in the store.
    pub complete: Vec<bool>,
}

/// The content store under a node's base path.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

fn hex_name(h: &H256) -> String {
    hex::encode(h.as_bytes())
}

/// Accumulates a chunk's bytes into pieces, writing each whole piece and hashing it.
struct PieceWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    piece_size: usize,
    hashes: Vec<[u8; 32]>,
    size: u64,
}

impl<W: Write> PieceWriter<W> {
    fn new(out: W, piece_size: u32) -> Self {
        let piece_size = piece_size as usize;
        Self { out, buf: Vec::with_capacity(piece_size), piece_size, hashes: Vec::new(), size: 0 }
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = (self.piece_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.piece_size {
                self.flush_piece()?;
            }
        }
        Ok(())
    }

    fn flush_piece(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write_all(&self.buf)?;
        self.hashes.push(blake2_256(&self.buf).0);
        self.size += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<(W, Vec<[u8; 32]>, u64)> {
        self.flush_piece()?;
        Ok((self.out, self.hashes, self.size))
    }
}

impl Store {
    /// Opens (creating it if needed) the store in `dir` (`<base>/models`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["manifests", "chunks", "partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Self { dir })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn manifest_path(&self, id: &ModelId) -> PathBuf {
        self.dir.join("manifests").join(hex_name(id))
    }

    fn chunk_path(&self, root: &H256) -> PathBuf {
        self.dir.join("chunks").join(hex_name(root))
    }

    fn hashes_path(&self, root: &H256) -> PathBuf {
        self.dir.join("chunks").join(format!("{}.hashes", hex_name(root)))
    }

    fn partial_path(&self, root: &H256, ext: &str) -> PathBuf {
        self.dir.join("partial").join(format!("{}.{ext}", hex_name(root)))
    }

    /// Writes `bytes` to `path` through a temporary file and a rename.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Imports the model at `path`: a safetensors model directory (or a `.safetensors` file in
    /// one) with [`Store::import_safetensors`], anything else as GGUF with
    /// [`Store::import_gguf`].
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Imported> {
        if path.is_dir() {
            self.import_safetensors(path, name)
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            self.import_safetensors(path.parent().unwrap_or(Path::new(".")), name)
        } else {
            self.import_gguf(path, name)
        }
    }

    /// Splits the GGUF model at `path` into chunks in the store and writes its manifest,
    /// reading the file once, a piece at a time (memory does not grow with the file). `name`
    /// is the manifest's label (the file's name when `None`).
    pub fn import_gguf(&self, path: &Path, name: Option<&str>) -> Result<Imported> {
        let bad = |reason: String| StoreError::BadModel { path: path.to_path_buf(), reason };
        let ckpt = GgufCheckpoint::open(path).map_err(|e| bad(e.to_string()))?;
        let cfg = ckpt.config.clone();
        let layers = u32::try_from(cfg.num_layers).map_err(|_| bad("too many layers".into()))?;
        let file_len = fs::metadata(path).map_err(io_err(path))?.len();
        let segments = gguf_layout(&ckpt.content, file_len, layers).map_err(bad)?;
        let mut file =
            BufReader::with_capacity(PIECE_SIZE as usize, File::open(path).map_err(io_err(path))?);
        let label = name.map(str::to_string).unwrap_or_else(|| {
            path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        });
        self.write_model(&mut file, path, &segments, &cfg, layers, label, file_len)
    }

    /// Splits the safetensors model in the directory `dir` (its `config.json`, `tokenizer.json`
    /// and shards) into chunks in the store, as one [`SafetensorsBundle`], and writes its
    /// manifest; reads each shard once, a piece at a time. `name` labels it (the directory's
    /// name when `None`).
    pub fn import_safetensors(&self, dir: &Path, name: Option<&str>) -> Result<Imported> {
        let bad = |reason: String| StoreError::BadModel { path: dir.to_path_buf(), reason };
        let bundle = SafetensorsBundle::of_dir(dir).map_err(|e| bad(e.to_string()))?;
        let cfg = bundle.config.clone();
        let layers = u32::try_from(cfg.num_layers).map_err(|_| bad("too many layers".into()))?;
        let segments = safetensors_layout(&bundle.tensors, bundle.len(), layers).map_err(bad)?;
        let len = bundle.len();
        let mut reader = BundleReader::new(bundle);
        let label = name.map(str::to_string).unwrap_or_else(|| {
            dir.file_name().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        });
        self.write_model(&mut reader, dir, &segments, &cfg, layers, label, len)
    }

    /// Writes the chunks of a model read from `file` (`path` names it in errors) split along
    /// `segments` (the shared chunk, then one per layer), and its manifest.
    #[allow(clippy::too_many_arguments)]
    fn write_model(
        &self,
        file: &mut (impl Read + Seek),
        path: &Path,
        segments: &[Segment],
        cfg: &Config,
        layers: u32,
        label: String,
        file_len: u64,
    ) -> Result<Imported> {
        let mut chunks = Vec::with_capacity(layers as usize + 1);
        let mut reused = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let parts = std::iter::once(Part::Shared).chain((0..layers).map(Part::Layer));
        for part in parts {
            let tmp = self.dir.join("partial").join(format!("import-{}.tmp", std::process::id()));
            let out = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut w = PieceWriter::new(io::BufWriter::new(out), PIECE_SIZE);
            for seg in segments.iter().filter(|s| s.part == part) {
                file.seek(SeekFrom::Start(seg.start)).map_err(io_err(path))?;
                let mut left = seg.len;
                while left > 0 {
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    file.read_exact(&mut buf[..n]).map_err(io_err(path))?;
                    w.write(&buf[..n]).map_err(io_err(&tmp))?;
                    left -= n as u64;
                }
            }
            let (out, hashes, size) = w.finish().map_err(io_err(&tmp))?;
            out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
            let root = merkle_root(&hashes);
            let dest = self.chunk_path(&root);
            if dest.exists() && self.hashes_path(&root).exists() {
                reused += 1;
                fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            } else {
                self.write_atomic(&self.hashes_path(&root), &hashes.encode())?;
                fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            }
            let kind = match part {
                Part::Shared => ChunkKind::Shared,
                Part::Layer(l) => ChunkKind::Layers { start: l, end: l + 1 },
            };
            chunks.push(Chunk { kind, root, size, piece_size: PIECE_SIZE });
        }
        let mut label = label.into_bytes();
        label.truncate(models::MAX_NAME_LEN);
        while std::str::from_utf8(&label).is_err() {
            label.pop();
        }
        let shared_root = chunks[0].root;
        let manifest = Manifest {
            name: label,
            architecture: b"llama".to_vec(),
            hyper: hyper_params(cfg),
            layer_count: layers,
            // The tokenizer is in the header, in the shared chunk.
            tokenizer_hash: shared_root,
            chunks,
        };
        manifest.validate().map_err(|e| StoreError::Manifest(format!("{e:?}")))?;
        let id = manifest.id();
        self.put_manifest(&manifest)?;
        Ok(Imported { id, manifest, bytes: file_len, reused_chunks: reused })
    }

    /// Keeps `manifest` in the store (a pulled model's, from the chain).
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.write_atomic(&self.manifest_path(&manifest.id()), &manifest.encode())
    }

    /// The manifest of model `id`, if the store has it.
    pub fn manifest(&self, id: &ModelId) -> Result<Option<Manifest>> {
        let path = self.manifest_path(id);
        let bytes = match read_bounded(&path, MAX_MANIFEST_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupt = |reason: String| StoreError::CorruptManifest { path: path.clone(), reason };
        let m = Manifest::decode(&mut &bytes[..]).map_err(|e| corrupt(e.to_string()))?;
        if m.id() != *id {
            return Err(corrupt("its content is another model's".into()));
        }
        Ok(Some(m))
    }

    /// Every model in the store, with the chunks it holds complete.
    pub fn models(&self) -> Result<Vec<StoredModel>> {
        let dir = self.dir.join("manifests");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_id) else { continue };
            if let Some(manifest) = self.manifest(&id)? {
                let complete = manifest.chunks.iter().map(|c| self.has_chunk(&c.root)).collect();
                out.push(StoredModel { id, manifest, complete });
            }
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    /// Whether the chunk `root` is complete in the store.
    pub fn has_chunk(&self, root: &H256) -> bool {
        self.chunk_path(root).is_file() && self.hashes_path(root).is_file()
    }

    /// Every complete chunk of every stored model (what the node provides).
    pub fn complete_chunks(&self) -> Result<Vec<H256>> {
        let mut roots: Vec<H256> = self
            .models()?
            .into_iter()
            .flat_map(|m| {
                m.manifest
                    .chunks
                    .into_iter()
                    .zip(m.complete)
                    .filter_map(|(c, done)| done.then_some(c.root))
            })
            .collect();
        roots.sort();
        roots.dedup();
        Ok(roots)
    }

    /// The piece hashes of a complete chunk (`None`: not complete here).
    pub fn piece_hashes(&self, root: &H256) -> Result<Option<Vec<[u8; 32]>>> {
        if !self.has_chunk(root) {
            return Ok(None);
        }
        let path = self.hashes_path(root);
        let bytes =
            read_bounded(&path, 32 * models::MAX_PIECES_PER_CHUNK + 8).map_err(io_err(&path))?;
        let hashes = Vec::<[u8; 32]>::decode(&mut &bytes[..]).map_err(|e| {
            StoreError::BadHashes { root: *root, reason: format!("stored list: {e}") }
        })?;
        Ok(Some(hashes))
    }

    /// Reads piece `index` (of `piece_size` bytes) of a complete chunk: `None` when the chunk
    /// is not complete here or has no such piece.
    pub fn read_piece(&self, root: &H256, piece_size: u32, index: u32) -> Result<Option<Vec<u8>>> {
        if !self.has_chunk(root) {
            return Ok(None);
        }
        let path = self.chunk_path(root);
        let file = File::open(&path).map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let start = u64::from(index) * u64::from(piece_size);
        if start >= size {
            return Ok(None);
        }
        let len = (size - start).min(u64::from(piece_size)) as usize;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, start).map_err(io_err(&path))?;
        Ok(Some(buf))
    }

    /// Checks every complete chunk of model `id` held here against its root: each piece
    /// hashed again and compared with the chunk's piece hashes, which must hash to the root.
    /// Returns (bytes checked, the roots of chunks that failed).
    pub fn verify_model(&self, id: &ModelId) -> Result<(u64, Vec<H256>)> {
        let manifest = self.manifest(id)?.ok_or(StoreError::UnknownModel(*id))?;
        let (mut bytes, mut bad) = (0u64, Vec::new());
        let mut buf = Vec::new();
        for c in manifest.chunks.iter().filter(|c| self.has_chunk(&c.root)) {
            let hashes = self.piece_hashes(&c.root)?.unwrap_or_default();
            let path = self.chunk_path(&c.root);
            let mut file =
                BufReader::with_capacity(1 << 20, File::open(&path).map_err(io_err(&path))?);
            let mut ok = check_hashes(c, &hashes).is_ok();
            for index in 0..piece_count(c) {
                if !ok {
                    break;
                }
                buf.resize(piece_len(c, index) as usize, 0);
                file.read_exact(&mut buf).map_err(io_err(&path))?;
                ok = blake2_256(&buf).0 == hashes[index as usize];
                bytes += buf.len() as u64;
            }
            if !ok {
                bad.push(c.root);
            }
        }
        Ok((bytes, bad))
    }

    /// Removes model `id`: its manifest and the chunks (complete or partial) no other stored
    /// model uses. Returns the roots of the chunks removed.
    pub fn remove_model(&self, id: &ModelId) -> Result<Vec<H256>> {
        let manifest = self.manifest(id)?.ok_or(StoreError::UnknownModel(*id))?;
        let path = self.manifest_path(id);
        fs::remove_file(&path).map_err(io_err(&path))?;
        let others = self.models()?;
        let mut removed = Vec::new();
        for c in &manifest.chunks {
            if others.iter().any(|m| m.manifest.chunks.iter().any(|o| o.root == c.root)) {
                continue;
            }
            let paths = [
                self.chunk_path(&c.root),
                self.hashes_path(&c.root),
                self.partial_path(&c.root, "data"),
                self.partial_path(&c.root, "hashes"),
                self.partial_path(&c.root, "bitmap"),
            ];
            let mut any = false;
            for p in paths {
                match fs::remove_file(&p) {
                    Ok(()) => any = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&p)(e)),
                }
            }
            if any {
                removed.push(c.root);
            }
        }
        Ok(removed)
    }

    /// The piece hashes of a chunk being pulled, if a partial download of it exists (so a
    /// resumed pull need not ask for them again). They were checked against the root when
    /// the download began.
    pub fn partial_hashes(&self, chunk: &Chunk) -> Option<Vec<[u8; 32]>> {
        let path = self.partial_path(&chunk.root, "hashes");
        let bytes = read_bounded(&path, 32 * models::MAX_PIECES_PER_CHUNK + 8).ok()?;
        let hashes = Vec::<[u8; 32]>::decode(&mut &bytes[..]).ok()?;
        check_hashes(chunk, &hashes).ok()?;
        Some(hashes)
    }

    /// Opens (or starts) the download of `chunk` with its piece `hashes`, which must hash to
    /// its root. Pieces a previous download wrote are checked again and kept.
    pub fn partial(&self, chunk: &Chunk, hashes: Vec<[u8; 32]>) -> Result<Partial> {
        check_hashes(chunk, &hashes)?;
        let hashes_path = self.partial_path(&chunk.root, "hashes");
        if !hashes_path.exists() {
            self.write_atomic(&hashes_path, &hashes.encode())?;
        }
        let data_path = self.partial_path(&chunk.root, "data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(io_err(&data_path))?;
        data.set_len(chunk.size).map_err(io_err(&data_path))?;
        let bitmap_path = self.partial_path(&chunk.root, "bitmap");
        let bitmap = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&bitmap_path)
            .map_err(io_err(&bitmap_path))?;
        let n = hashes.len();
        let mut marks = vec![0u8; n];
        let len = bitmap.metadata().map_err(io_err(&bitmap_path))?.len();
        if len == n as u64 {
            bitmap.read_exact_at(&mut marks, 0).map_err(io_err(&bitmap_path))?;
        } else {
            bitmap.set_len(n as u64).map_err(io_err(&bitmap_path))?;
        }
        let mut have = vec![false; n];
        let mut buf = Vec::new();
        for (i, mark) in marks.iter().enumerate() {
            if *mark != 1 {
                continue;
            }
            let index = i as u32;
            buf.resize(piece_len(chunk, index) as usize, 0);
            let start = u64::from(index) * u64::from(chunk.piece_size);
            data.read_exact_at(&mut buf, start).map_err(io_err(&data_path))?;
            have[i] = blake2_256(&buf).0 == hashes[i];
        }
        Ok(Partial {
            chunk: chunk.clone(),
            hashes,
            have,
            data,
            bitmap,
            data_path,
            bitmap_path,
            hashes_path,
            chunk_path: self.chunk_path(&chunk.root),
            final_hashes_path: self.hashes_path(&chunk.root),
        })
    }

    /// The model `manifest` as a checkpoint read from its chunks in the store: its stages can
    /// be loaded from the chunks the store holds (the shared one is needed for any).
    pub fn checkpoint(&self, manifest: &Manifest) -> Result<Checkpoint> {
        let shared = manifest
            .chunks
            .iter()
            .find(|c| c.kind == ChunkKind::Shared)
            .ok_or_else(|| StoreError::Layout("the manifest has no shared chunk".into()))?;
        if !self.has_chunk(&shared.root) {
            return Err(StoreError::MissingChunk {
                root: shared.root,
                what: "header, embeddings and head".into(),
            });
        }
        let shared_path = self.chunk_path(&shared.root);
        let label = self.dir.join("manifests").join(hex_name(&manifest.id()));
        let file_len: u64 = manifest.chunks.iter().map(|c| c.size).sum();
        // The shared chunk starts with the model's header: a GGUF header, or a safetensors
        // bundle's prefix.
        let mut r = BufReader::new(File::open(&shared_path).map_err(io_err(&shared_path))?);
        let mut magic = [0u8; 8];
        let bundle = r.read_exact(&mut magic).is_ok() && &magic == BUNDLE_MAGIC;
        r.seek(SeekFrom::Start(0)).map_err(io_err(&shared_path))?;
        let segments = if bundle {
            let index =
                read_bundle_index(&mut r, &label).map_err(|e| StoreError::Layout(e.to_string()))?;
            safetensors_layout(&index.tensor_ranges(), file_len, manifest.layer_count)
        } else {
            let content = read_gguf_header(&mut r, &label)?;
            gguf_layout(&content, file_len, manifest.layer_count)
        }
        .map_err(StoreError::Layout)?;
        drop(r);
        // Place each segment in its chunk, and check the chunks' sizes against the manifest.
        let mut files = Vec::with_capacity(manifest.chunks.len());
        let mut fill = vec![0u64; manifest.chunks.len()];
        let mut index_of = std::collections::HashMap::new();
        for (i, c) in manifest.chunks.iter().enumerate() {
            let part = part_of(&c.kind).ok_or_else(|| {
                StoreError::Layout(format!("chunk {i} is not one layer nor the shared chunk"))
            })?;
            index_of.insert(part, i);
            files.push(self.chunk_path(&c.root));
        }
        let mut placed = Vec::with_capacity(segments.len());
        for s in &segments {
            let &i = index_of
                .get(&s.part)
                .ok_or_else(|| StoreError::Layout(format!("no chunk for {:?}", s.part)))?;
            placed.push(Placed { start: s.start, len: s.len, file: i, offset: fill[i] });
            fill[i] += s.len;
        }
        for (i, c) in manifest.chunks.iter().enumerate() {
            if fill[i] != c.size {
                return Err(StoreError::Layout(format!(
                    "chunk {i} holds {} bytes, its header says {}",
                    c.size, fill[i]
                )));
            }
        }
        let source = Arc::new(ChunkedFile { segments: placed, files, len: file_len });
        Ok(Checkpoint::open_source(label, source)?)
    }
}

/// The hyper-parameters of a model as the chain records them.
pub fn hyper_params(cfg: &Config) -> HyperParams {
    use bitorch_primitives::saturating_u32 as u32_of;
    HyperParams {
        hidden_size: u32_of(cfg.hidden_size),
        intermediate_size: u32_of(cfg.intermediate_size),
        num_attention_heads: u32_of(cfg.num_heads),
        num_kv_heads: u32_of(cfg.num_kv_heads),
        vocab_size: u32_of(cfg.vocab_size),
        context_length: u32_of(cfg.context_length),
        rope_theta: (cfg.rope_theta as u32).max(1),
        rms_norm_eps_e9: ((cfg.rms_norm_eps * 1e9).round() as u32).max(1),
    }
}

fn parse_id(s: &str) -> Option<ModelId> {
    let bytes = hex::decode(s).ok()?;
    (bytes.len() == 32).then(|| H256::from_slice(&bytes))
}

fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    if f.metadata()?.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file larger than expected"));
    }
    let mut out = Vec::new();
    f.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// Checks that `hashes` are the piece hashes of `chunk`: one per piece, hashing to its root.
pub fn check_hashes(chunk: &Chunk, hashes: &[[u8; 32]]) -> Result<()> {
    let bad = |reason: String| StoreError::BadHashes { root: chunk.root, reason };
    let n = piece_count(chunk) as usize;
    if hashes.len() != n {
        return Err(bad(format!("{} hashes for {n} pieces", hashes.len())));
    }
    if merkle_root(hashes) != chunk.root {
        return Err(bad("they do not hash to the chunk's root".into()));
    }
    Ok(())
}

/// A chunk being downloaded: which pieces it has, verified.
#[derive(Debug)]
pub struct Partial {
    chunk: Chunk,
    hashes: Vec<[u8; 32]>,
    have: Vec<bool>,
    data: File,
    bitmap: File,
    data_path: PathBuf,
    bitmap_path: PathBuf,
    hashes_path: PathBuf,
    chunk_path: PathBuf,
    final_hashes_path: PathBuf,
}

impl Partial {
    /// The chunk.
    pub fn chunk(&self) -> &Chunk {
        &self.chunk
    }

    /// Whether piece `index` is here, verified.
    pub fn has(&self, index: u32) -> bool {
        self.have.get(index as usize).copied().unwrap_or(false)
    }

    /// The pieces still missing, in order.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.have.len() as u32).filter(|&i| !self.has(i)).collect()
    }

    /// How many pieces are here.
    pub fn present(&self) -> usize {
        self.have.iter().filter(|h| **h).count()
    }

    /// What checking piece `index` needs (the chunk and the piece's hash), to check it
    /// without holding the download ([`Expected::verify`]).
    pub fn expected(&self, index: u32) -> Option<Expected> {
        let hash = *self.hashes.get(index as usize)?;
        Some(Expected { chunk: self.chunk.clone(), index, hash })
    }

    /// Checks piece `index` against its hash, then writes it and marks it in the bitmap.
    /// Nothing is written for a piece that does not verify.
    pub fn put(&mut self, index: u32, bytes: Vec<u8>) -> Result<()> {
        let expected = self.expected(index).ok_or(StoreError::BadPiece {
            root: self.chunk.root,
            index,
            reason: "no such piece",
        })?;
        self.put_verified(expected.verify(bytes)?)
    }

    /// Writes a piece checked against this chunk's hash, and marks it in the bitmap.
    pub fn put_verified(&mut self, piece: Verified) -> Result<()> {
        let Verified { root, index, bytes } = piece;
        if root != self.chunk.root || index as usize >= self.have.len() {
            return Err(StoreError::BadPiece { root, index, reason: "not a piece of this chunk" });
        }
        let start = u64::from(index) * u64::from(self.chunk.piece_size);
        self.data.write_all_at(&bytes, start).map_err(io_err(&self.data_path))?;
        self.bitmap.write_all_at(&[1], u64::from(index)).map_err(io_err(&self.bitmap_path))?;
        self.have[index as usize] = true;
        Ok(())
    }

    /// Moves a chunk whose pieces are all here into the store's complete chunks. Returns
    /// `false` (and does nothing) while pieces are missing.
    pub fn complete(&self) -> Result<bool> {
        if self.have.iter().any(|h| !h) {
            return Ok(false);
        }
        self.data.sync_all().map_err(io_err(&self.data_path))?;
        fs::rename(&self.hashes_path, &self.final_hashes_path)
            .map_err(io_err(&self.final_hashes_path))?;
        fs::rename(&self.data_path, &self.chunk_path).map_err(io_err(&self.chunk_path))?;
        let _ = fs::remove_file(&self.bitmap_path);
        Ok(true)
    }
}

/// What a piece must be: its chunk, index and hash.
#[derive(Clone, Debug)]
pub struct Expected {
    chunk: Chunk,
    index: u32,
    hash: [u8; 32],
}

/// A piece that matched its hash (only [`Expected::verify`] makes one).
#[derive(Debug)]
pub struct Verified {
    root: H256,
    index: u32,
    bytes: Vec<u8>,
}

impl Verified {
    /// Its length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (no piece is).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Expected {
    /// Checks `bytes` against the piece's length and hash.
    pub fn verify(&self, bytes: Vec<u8>) -> Result<Verified> {
        let bad =
            |reason| StoreError::BadPiece { root: self.chunk.root, index: self.index, reason };
        if bytes.len() as u64 != piece_len(&self.chunk, self.index) {
            return Err(bad("wrong length"));
        }
        if blake2_256(&bytes).0 != self.hash {
            return Err(bad("its hash is not the one the chunk names"));
        }
        Ok(Verified { root: self.chunk.root, index: self.index, bytes })
    }
}

/// A [`SafetensorsBundle`] read as one stream: its prefix from memory, the shards' data from
/// their files.
struct BundleReader {
    bundle: SafetensorsBundle,
    /// Where each shard's data starts in the bundle.
    starts: Vec<u64>,
    len: u64,
    pos: u64,
    open: Option<(usize, File)>,
}

impl BundleReader {
    fn new(bundle: SafetensorsBundle) -> Self {
        let mut at = bundle.prefix.len() as u64;
        let starts = bundle
            .shards
            .iter()
            .map(|s| {
                let start = at;
                at += s.2;
                start
            })
            .collect();
        let len = bundle.len();
        Self { bundle, starts, len, pos: 0, open: None }
    }
}

impl Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let prefix = self.bundle.prefix.len() as u64;
        if self.pos < prefix {
            let from = &self.bundle.prefix[self.pos as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let i = self.starts.partition_point(|&s| s <= self.pos) - 1;
        let (path, offset, len) = &self.bundle.shards[i];
        let within = self.pos - self.starts[i];
        let n = buf.len().min(usize::try_from(len - within).unwrap_or(usize::MAX));
        if !matches!(&self.open, Some((f, _)) if *f == i) {
            self.open = Some((i, File::open(path)?));
        }
        let Some((_, file)) = &self.open else { return Ok(0) };
        let got = file.read_at(&mut buf[..n], offset + within)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is shorter than when its header was read", path.display()),
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for BundleReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_in(self.len, self.pos, pos)?;
        Ok(self.pos)
    }
}

/// Where a seek from `pos` in a stream of `len` bytes lands (past the end is allowed, as for
/// files; before the start is an error).
fn seek_in(len: u64, pos: u64, to: SeekFrom) -> io::Result<u64> {
    let new = match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))
}

/// A segment of the model file and where it lies in the chunk files.
#[derive(Clone, Copy, Debug)]
struct Placed {
    start: u64,
    len: u64,
    file: usize,
    offset: u64,
}

/// A model file read from its chunks.
#[derive(Debug)]
struct ChunkedFile {
    segments: Vec<Placed>,
    files: Vec<PathBuf>,
    len: u64,
}

impl ByteSource for ChunkedFile {
    fn open(&self) -> io::Result<Box<dyn ReadSeek>> {
        Ok(Box::new(ChunkedReader {
            segments: self.segments.clone(),
            files: self.files.clone(),
            len: self.len,
            pos: 0,
            open: None,
        }))
    }
}

struct ChunkedReader {
    segments: Vec<Placed>,
    files: Vec<PathBuf>,
    len: u64,
    pos: u64,
    open: Option<(usize, File)>,
}

impl Read for ChunkedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let i = self.segments.partition_point(|s| s.start + s.len <= self.pos);
        let Some(seg) = self.segments.get(i).copied() else { return Ok(0) };
        let within = self.pos - seg.start;
        let n = buf.len().min(usize::try_from(seg.len - within).unwrap_or(usize::MAX));
        if !matches!(&self.open, Some((f, _)) if *f == seg.file) {
            let file = File::open(&self.files[seg.file]).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("chunk {} is not in the store", self.files[seg.file].display()),
                )
            })?;
            self.open = Some((seg.file, file));
        }
        let Some((_, file)) = &self.open else { return Ok(0) };
        let got = file.read_at(&mut buf[..n], seg.offset + within)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for ChunkedReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_in(self.len, self.pos, pos)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hash_as_written_and_a_bad_piece_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = PieceWriter::new(Vec::new(), 300);
        w.write(&data[..123]).unwrap();
        w.write(&data[123..]).unwrap();
        let (out, hashes, size) = w.finish().unwrap();
        assert_eq!((out, size, hashes.len()), (data.clone(), 1000, 4));
        let chunk = Chunk {
            kind: ChunkKind::Shared,
            root: merkle_root(&hashes),
            size: 1000,
            piece_size: 300,
        };
        let mut wrong = hashes.clone();
        wrong.swap(0, 1);
        assert!(matches!(store.partial(&chunk, wrong), Err(StoreError::BadHashes { .. })));
        let mut p = store.partial(&chunk, hashes.clone()).unwrap();
        assert_eq!(p.missing(), vec![0, 1, 2, 3]);
        assert!(matches!(p.put(1, data[0..300].to_vec()), Err(StoreError::BadPiece { .. })));
        assert!(matches!(p.put(3, data[900..999].to_vec()), Err(StoreError::BadPiece { .. })));
        p.put(3, data[900..].to_vec()).unwrap();
        p.put(0, data[..300].to_vec()).unwrap();
        assert!(!p.complete().unwrap());
        drop(p);
        // Reopened: the two verified pieces are kept; a corrupted one is found and dropped.
        let data_path = store.partial_path(&chunk.root, "data");
        let f = OpenOptions::new().write(true).open(&data_path).unwrap();
        f.write_all_at(&[0xff], 950).unwrap();
        assert_eq!(store.partial_hashes(&chunk), Some(hashes.clone()));
        let mut p = store.partial(&chunk, hashes).unwrap();
        assert_eq!(p.missing(), vec![1, 2, 3]);
        for i in [1u32, 2, 3] {
            let s = i as usize * 300;
            p.put(i, data[s..(s + 300).min(1000)].to_vec()).unwrap();
        }
        assert!(p.complete().unwrap());
        assert!(store.has_chunk(&chunk.root));
        assert_eq!(store.read_piece(&chunk.root, 300, 3).unwrap().unwrap(), data[900..]);
        assert_eq!(store.read_piece(&chunk.root, 300, 4).unwrap(), None);
        assert_eq!(store.piece_hashes(&chunk.root).unwrap().unwrap().len(), 4);
    }
}

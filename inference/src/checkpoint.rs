//! Checkpoint files: GGUF (quantized) and safetensors with a `config.json` (f32/f16/bf16).
//!
//! Both readers load tensors one by one by name, so a stage reads only its own layers. Neither
//! memory-maps the file (the workspace forbids `unsafe`): GGUF tensors are read with a seek, and
//! safetensors headers are parsed here so that each tensor is read from its own byte range.

use crate::{Config, Error, Result};
use candle_core::{quantized::QTensor, DType, Device, Tensor};
use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

/// An opened checkpoint: its config and the index of its tensors (no weights read yet).
#[derive(Debug)]
pub enum Checkpoint {
    /// A GGUF file.
    Gguf(GgufCheckpoint),
    /// A directory with `config.json` and one or more `*.safetensors` files.
    Safetensors(SafetensorsCheckpoint),
}

impl Checkpoint {
    /// Opens a `.gguf` file, or a directory (or a `.safetensors` file in one) holding
    /// `config.json` and the safetensors shards.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        if meta.is_dir() {
            return Ok(Self::Safetensors(SafetensorsCheckpoint::open(path)?));
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            let dir = path.parent().unwrap_or(Path::new("."));
            return Ok(Self::Safetensors(SafetensorsCheckpoint::open(dir)?));
        }
        Ok(Self::Gguf(GgufCheckpoint::open(path)?))
    }

    /// Opens the checkpoint `source` gives: a [`SafetensorsBundle`] (it starts with
    /// [`BUNDLE_MAGIC`]) or a GGUF file. `label` names it in errors.
    pub fn open_source(label: PathBuf, source: std::sync::Arc<dyn ByteSource>) -> Result<Self> {
        let mut magic = [0u8; 8];
        let mut r = source.open().map_err(|e| Error::Io { path: label.clone(), source: e })?;
        let got = r.read(&mut magic).map_err(|e| Error::Io { path: label.clone(), source: e })?;
        if got == magic.len() && &magic == BUNDLE_MAGIC {
            return Ok(Self::Safetensors(SafetensorsCheckpoint::open_source(label, source)?));
        }
        Ok(Self::Gguf(GgufCheckpoint::open_source(label, source)?))
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        match self {
            Self::Gguf(c) => &c.config,
            Self::Safetensors(c) => &c.config,
        }
    }

    /// Where it was opened from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(c) => &c.path,
            Self::Safetensors(c) => &c.dir,
        }
    }
}

pub use candle_core::quantized::gguf_file;

/// Parses a GGUF header (metadata and tensor index) from `reader`, at its start; `label`
/// names the bytes in errors.
pub fn read_gguf_header(
    reader: &mut (impl Read + Seek),
    label: &Path,
) -> Result<gguf_file::Content> {
    let bad = |reason: String| Error::BadGguf { path: label.to_path_buf(), reason };
    // candle's parser bounds its allocations by the file size; the catch is defence in depth
    // against a header it has not seen (say, a zero alignment), which must not take down a
    // worker that was handed a bad file.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gguf_file::Content::read(reader)))
        .map_err(|_| bad("the parser panicked".into()))?
        .map_err(|e| bad(e.to_string()))
}

/// A reader that can also seek, for a checkpoint's bytes.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// Where a GGUF checkpoint's bytes come from: a file, or (for a model pulled from peers) the
/// chunks of one held in a content store, read as if they were the file.
pub trait ByteSource: Send + Sync + std::fmt::Debug {
    /// A new reader over the bytes, at offset 0.
    fn open(&self) -> std::io::Result<Box<dyn ReadSeek>>;
}

/// A file's bytes.
#[derive(Debug)]
struct FileSource(PathBuf);

impl ByteSource for FileSource {
    fn open(&self) -> std::io::Result<Box<dyn ReadSeek>> {
        Ok(Box::new(File::open(&self.0)?))
    }
}

/// A GGUF file's metadata and tensor index.
#[derive(Debug)]
pub struct GgufCheckpoint {
    /// The file (for a checkpoint read from elsewhere: a label naming it in errors).
    pub path: PathBuf,
    source: std::sync::Arc<dyn ByteSource>,
    /// Parsed header (metadata and tensor infos).
    pub content: gguf_file::Content,
    /// Hyper-parameters from the metadata.
    pub config: Config,
}

impl GgufCheckpoint {
    /// Parses the header of a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Self::open_source(path.clone(), std::sync::Arc::new(FileSource(path)))
    }

    /// Parses the header of the GGUF bytes `source` gives (`label` names them in errors).
    pub fn open_source(label: PathBuf, source: std::sync::Arc<dyn ByteSource>) -> Result<Self> {
        let path = label;
        let file = source.open().map_err(|source| Error::Io { path: path.clone(), source })?;
        let mut reader = BufReader::new(file);
        let bad = |reason: String| Error::BadGguf { path: path.clone(), reason };
        let content = read_gguf_header(&mut reader, &path)?;
        let file_len = reader.seek(SeekFrom::End(0)).map_err(|e| bad(e.to_string()))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.dims().iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let block = info.ggml_dtype.block_size() as u64;
            let bytes = match elems {
                Some(e) if block > 0 && e % block == 0 => {
                    (e / block).checked_mul(info.ggml_dtype.type_size() as u64)
                }
                _ => None,
            };
            let end = bytes.and_then(|b| {
                content.tensor_data_offset.checked_add(info.offset).and_then(|s| s.checked_add(b))
            });
            if end.is_none_or(|end| end > file_len) {
                return Err(bad(format!(
                    "tensor '{name}' does not fit in the file ({file_len} bytes): truncated?"
                )));
            }
        }
        let config = Config::from_gguf(&content)?;
        Ok(Self { path, source, content, config })
    }

    /// Opens a reader for loading tensors.
    pub fn reader(&self) -> Result<BufReader<Box<dyn ReadSeek>>> {
        let file =
            self.source.open().map_err(|source| Error::Io { path: self.path.clone(), source })?;
        Ok(BufReader::new(file))
    }

    /// Whether the file holds a tensor of that name.
    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one quantized tensor, checking its shape (`expected` in candle's row-major order).
    pub fn qtensor(
        &self,
        reader: &mut BufReader<Box<dyn ReadSeek>>,
        name: &str,
        expected: &[usize],
        device: &Device,
    ) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        if info.shape.dims() != expected {
            return Err(Error::TensorShape {
                name: name.into(),
                got: info.shape.dims().to_vec(),
                expected: expected.to_vec(),
            });
        }
        info.read(reader, self.content.tensor_data_offset, device)
            .map_err(|e| Error::BadGguf { path: self.path.clone(), reason: e.to_string() })
    }
}

#[derive(Debug, Clone)]
struct StEntry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    len: u64,
}

/// A safetensors checkpoint: `config.json` and the index of every shard's tensors.
#[derive(Debug)]
pub struct SafetensorsCheckpoint {
    /// The directory (for a checkpoint read from elsewhere: a label naming it in errors).
    pub dir: PathBuf,
    /// Hyper-parameters from `config.json`.
    pub config: Config,
    /// `config.json` as read.
    pub config_json: String,
    /// `tokenizer.json`, when the checkpoint carries it (a bundle); otherwise it is read
    /// from `dir`.
    tokenizer_json: Option<Vec<u8>>,
    sources: Vec<std::sync::Arc<dyn ByteSource>>,
    labels: Vec<PathBuf>,
    tensors: HashMap<String, StEntry>,
}

/// Largest safetensors header we accept (the format's reference reader uses the same bound).
const MAX_HEADER: u64 = 100 << 20;
/// Largest `config.json` read.
const MAX_CONFIG: u64 = 1 << 20;
/// Largest `tokenizer.json` read.
const MAX_TOKENIZER: u64 = 64 << 20;
/// Most shards in a model.
const MAX_SHARDS: u64 = 4096;
/// What a safetensors bundle starts with (see [`SafetensorsBundle`]).
pub const BUNDLE_MAGIC: &[u8; 8] = b"BTST\x00\x00\x00\x01";

/// The shard files of a safetensors model directory, in order: those its
/// `model.safetensors.index.json` names (its `weight_map`'s files, sorted), else every
/// `*.safetensors` file in it, sorted.
pub fn safetensors_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let bad = |reason: String| Error::BadSafetensors { path: index.clone(), reason };
        let json = read_limited(&index, MAX_HEADER)?;
        let v: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| bad(format!("index: {e}")))?;
        let map = v["weight_map"].as_object().ok_or_else(|| bad("no weight_map".into()))?;
        let mut names: Vec<&str> = Vec::new();
        for f in map.values() {
            let f =
                f.as_str().ok_or_else(|| bad("a weight_map value is not a file name".into()))?;
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(bad(format!("shard '{f}' is not a file in the model directory")));
            }
            names.push(f);
        }
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|f| dir.join(f)).collect()
    } else {
        std::fs::read_dir(dir)
            .map_err(|source| Error::Io { path: dir.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no *.safetensors file in the model directory",
            ),
        });
    }
    Ok(files)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    File::open(path).map_err(io)?.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(Error::BadSafetensors {
            path: path.to_path_buf(),
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

/// A safetensors model directory laid out as one stream of bytes, so that a content store can
/// split it into chunks and read it back without the directory (a model pulled from peers):
///
/// `BUNDLE_MAGIC | u32 shards | u64 config length | u64 tokenizer length | per shard: u64
/// header length, u64 data length | config.json | tokenizer.json | each shard's header JSON |
/// each shard's tensor data`
///
/// (integers little-endian). Everything but the tensor data is the `prefix`; the data of shard
/// `i` follows the prefix and the data of the shards before it.
#[derive(Debug, Clone)]
pub struct SafetensorsBundle {
    /// The model's hyper-parameters, from its `config.json`.
    pub config: Config,
    /// The prefix: the layout, the config, the tokenizer and the shards' headers.
    pub prefix: Vec<u8>,
    /// Each shard's data: its file, where the data starts in it, and its length.
    pub shards: Vec<(PathBuf, u64, u64)>,
    /// Each tensor: its name and where its bytes lie in the bundle (start, length).
    pub tensors: Vec<(String, u64, u64)>,
}

impl SafetensorsBundle {
    /// Reads the layout of the model directory `dir` (its config, tokenizer if any, and every
    /// shard's header; no tensor data).
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let config = read_limited(&dir.join("config.json"), MAX_CONFIG)?;
        let parsed = Config::from_hf_json(&String::from_utf8_lossy(&config))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            if tok_path.exists() { read_limited(&tok_path, MAX_TOKENIZER)? } else { Vec::new() };
        let files = safetensors_shards(dir)?;
        let mut headers = Vec::with_capacity(files.len());
        let mut shards = Vec::with_capacity(files.len());
        for path in &files {
            let io = |source| Error::Io { path: path.clone(), source };
            let mut f = File::open(path).map_err(io)?;
            let file_len = f.metadata().map_err(io)?.len();
            let (n, header) = read_raw_header(&mut f, file_len, path)?;
            shards.push((path.clone(), 8 + n, file_len - 8 - n));
            headers.push(header);
        }
        let mut prefix = Vec::new();
        prefix.extend_from_slice(BUNDLE_MAGIC);
        prefix.extend_from_slice(&(files.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&(config.len() as u64).to_le_bytes());
        prefix.extend_from_slice(&(tokenizer.len() as u64).to_le_bytes());
        for (h, (_, _, data_len)) in headers.iter().zip(&shards) {
            prefix.extend_from_slice(&(h.len() as u64).to_le_bytes());
            prefix.extend_from_slice(&data_len.to_le_bytes());
        }
        prefix.extend_from_slice(&config);
        prefix.extend_from_slice(&tokenizer);
        for h in &headers {
            prefix.extend_from_slice(h);
        }
        let mut tensors = Vec::new();
        let mut data_start = prefix.len() as u64;
        for (i, (h, (path, _, data_len))) in headers.iter().zip(&shards).enumerate() {
            let mut index = HashMap::new();
            parse_header(h, data_start, *data_len, i, path, &mut index)?;
            tensors.extend(index.into_iter().map(|(name, e)| (name, e.start, e.len)));
            data_start += data_len;
        }
        let mut names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::BadSafetensors {
                path: dir.to_path_buf(),
                reason: format!("tensor '{}' is in two shards", w[0]),
            });
        }
        Ok(Self { config: parsed, prefix, shards, tensors })
    }

    /// The bundle's length in bytes.
    pub fn len(&self) -> u64 {
        self.prefix.len() as u64 + self.shards.iter().map(|s| s.2).sum::<u64>()
    }

    /// Whether it holds no bytes (never: it has a prefix).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the prefix of a [`SafetensorsBundle`] says.
#[derive(Debug)]
pub struct BundleIndex {
    /// `config.json`.
    pub config_json: String,
    /// `tokenizer.json` (empty when the model came without one).
    pub tokenizer_json: Vec<u8>,
    /// Length of the prefix.
    pub prefix_len: u64,
    /// Length of all the shards' data after it.
    pub data_len: u64,
    tensors: HashMap<String, StEntry>,
}

impl BundleIndex {
    /// Each tensor's name and where its bytes lie in the bundle (start, length).
    pub fn tensor_ranges(&self) -> Vec<(String, u64, u64)> {
        self.tensors.iter().map(|(n, e)| (n.clone(), e.start, e.len)).collect()
    }
}

/// Reads the prefix of a [`SafetensorsBundle`] from `r` (at its start; `label` names it in
/// errors), every length bounded before anything is allocated: at most 4,096 shards, a
/// 1 MiB config, a 64 MiB tokenizer, 100 MiB per shard header; every tensor must lie in its
/// shard's data, and no name may be in two shards.
pub fn read_bundle_index(r: &mut impl Read, label: &Path) -> Result<BundleIndex> {
    let bad = |reason: String| Error::BadSafetensors { path: label.to_path_buf(), reason };
    let mut fixed = [0u8; 28];
    r.read_exact(&mut fixed).map_err(|_| bad("shorter than a bundle's header".into()))?;
    if &fixed[..8] != BUNDLE_MAGIC {
        return Err(bad("not a safetensors bundle".into()));
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let shards = u64::from(u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]));
    let (config_len, tok_len) = (word(&fixed[12..20]), word(&fixed[20..28]));
    if shards == 0 || shards > MAX_SHARDS {
        return Err(bad(format!("{shards} shards (1 to {MAX_SHARDS})")));
    }
    if config_len > MAX_CONFIG || tok_len > MAX_TOKENIZER {
        return Err(bad("the config or tokenizer is too large".into()));
    }
    let mut table = vec![0u8; shards as usize * 16];
    r.read_exact(&mut table).map_err(|_| bad("the shard table is cut short".into()))?;
    let sizes: Vec<(u64, u64)> = table.chunks(16).map(|c| (word(&c[..8]), word(&c[8..]))).collect();
    if let Some((n, _)) = sizes.iter().find(|(n, _)| *n > MAX_HEADER) {
        return Err(bad(format!("a shard header of {n} bytes")));
    }
    let mut read = |len: u64, what: &str| -> Result<Vec<u8>> {
        let mut v = vec![0u8; len as usize];
        r.read_exact(&mut v).map_err(|_| bad(format!("the {what} is cut short")))?;
        Ok(v)
    };
    let config_json = String::from_utf8(read(config_len, "config")?)
        .map_err(|_| bad("config.json is not UTF-8".into()))?;
    let tokenizer_json = read(tok_len, "tokenizer")?;
    let mut headers = Vec::with_capacity(sizes.len());
    for &(n, _) in &sizes {
        headers.push(read(n, "shard header")?);
    }
    let prefix_len =
        28 + 16 * shards + config_len + tok_len + sizes.iter().map(|s| s.0).sum::<u64>();
    let data_len = sizes
        .iter()
        .try_fold(0u64, |a, s| a.checked_add(s.1))
        .ok_or_else(|| bad("the shards' lengths overflow".into()))?;
    let mut tensors = HashMap::new();
    let mut data_start = prefix_len;
    for (h, &(_, len)) in headers.iter().zip(&sizes) {
        let mut index = HashMap::new();
        parse_header(h, data_start, len, 0, label, &mut index)?;
        for (name, e) in index {
            if tensors.contains_key(&name) {
                return Err(bad(format!("tensor '{name}' is in two shards")));
            }
            tensors.insert(name, e);
        }
        data_start = data_start.saturating_add(len);
    }
    Ok(BundleIndex { config_json, tokenizer_json, prefix_len, data_len, tensors })
}

/// Reads a shard's 8-byte header length and its header JSON.
fn read_raw_header(r: &mut impl Read, file_len: u64, path: &Path) -> Result<(u64, Vec<u8>)> {
    let bad = |reason: String| Error::BadSafetensors { path: path.to_path_buf(), reason };
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!("header length {n} does not fit in the file")));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(|_| bad("the header is cut short".into()))?;
    Ok((n, header))
}

impl SafetensorsCheckpoint {
    /// Reads `config.json` and the headers of the shards of the model in `dir` (those its
    /// `model.safetensors.index.json` names, else every `*.safetensors` file).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_json =
            String::from_utf8_lossy(&read_limited(&dir.join("config.json"), MAX_CONFIG)?)
                .into_owned();
        let config = Config::from_hf_json(&config_json)?;
        let files = safetensors_shards(&dir)?;
        let mut tensors = HashMap::new();
        let mut sources: Vec<std::sync::Arc<dyn ByteSource>> = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let io = |source| Error::Io { path: path.clone(), source };
            let mut f = File::open(path).map_err(io)?;
            let file_len = f.metadata().map_err(io)?.len();
            let (n, header) = read_raw_header(&mut f, file_len, path)?;
            parse_header(&header, 8 + n, file_len - 8 - n, i, path, &mut tensors)?;
            sources.push(std::sync::Arc::new(FileSource(path.clone())));
        }
        Ok(Self { dir, config, config_json, tokenizer_json: None, sources, labels: files, tensors })
    }

    /// Reads a [`SafetensorsBundle`] from `source` (`label` names it in errors): its config,
    /// tokenizer and every shard's header, each bounded in size; the bundle must be as long
    /// as its layout says.
    pub fn open_source(label: PathBuf, source: std::sync::Arc<dyn ByteSource>) -> Result<Self> {
        let io = |source| Error::Io { path: label.clone(), source };
        let mut r = BufReader::new(source.open().map_err(io)?);
        let total = r.seek(SeekFrom::End(0)).map_err(io)?;
        r.seek(SeekFrom::Start(0)).map_err(io)?;
        let index = read_bundle_index(&mut r, &label)?;
        let want = index.prefix_len.saturating_add(index.data_len);
        if want != total {
            return Err(Error::BadSafetensors {
                path: label,
                reason: format!("the layout says {want} bytes, the bundle has {total}"),
            });
        }
        let config = Config::from_hf_json(&index.config_json)?;
        Ok(Self {
            dir: label.clone(),
            config,
            config_json: index.config_json,
            tokenizer_json: (!index.tokenizer_json.is_empty()).then_some(index.tokenizer_json),
            sources: vec![source],
            labels: vec![label],
            tensors: index.tensors,
        })
    }

    /// Whether a tensor of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// `tokenizer.json`: the bundle's, or the file in the model's directory.
    pub fn tokenizer_json(&self) -> Result<Vec<u8>> {
        match &self.tokenizer_json {
            Some(t) => Ok(t.clone()),
            None => read_limited(&self.dir.join("tokenizer.json"), MAX_TOKENIZER),
        }
    }

    /// Reads one tensor, checks its shape and converts it to `dtype`.
    pub fn tensor(
        &self,
        name: &str,
        expected: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        if e.shape != expected {
            return Err(Error::TensorShape {
                name: name.into(),
                got: e.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let path = &self.labels[e.file];
        let io = |source| Error::Io { path: path.clone(), source };
        let mut f = self.sources[e.file].open().map_err(io)?;
        f.seek(SeekFrom::Start(e.start)).map_err(io)?;
        let mut bytes = vec![0u8; e.len as usize];
        f.read_exact(&mut bytes).map_err(io)?;
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device)?;
        Ok(t.to_dtype(dtype)?)
    }
}

/// Indexes a shard's header JSON: its tensors' data lies at `data_start` (in source `file`)
/// and spans `data_len` bytes; `path` names the shard in errors.
fn parse_header(
    header: &[u8],
    data_start: u64,
    data_len: u64,
    file: usize,
    path: &Path,
    out: &mut HashMap<String, StEntry>,
) -> Result<()> {
    let bad = |reason: String| Error::BadSafetensors { path: path.to_path_buf(), reason };
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Info {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: (u64, u64),
        }
        let info: Info =
            serde_json::from_value(v).map_err(|e| bad(format!("entry '{name}': {e}")))?;
        let dtype = match info.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => return Err(Error::UnsupportedDtype { name, dtype: info.dtype }),
        };
        let (begin, end) = info.data_offsets;
        let elems = info.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let want = elems.and_then(|e| e.checked_mul(dtype.size_in_bytes() as u64));
        if end < begin || want != Some(end - begin) || end > data_len {
            return Err(bad(format!("tensor '{name}' has inconsistent offsets {begin}..{end}")));
        }
        out.insert(
            name,
            StEntry { file, dtype, shape: info.shape, start: data_start + begin, len: end - begin },
        );
    }
    Ok(())
}

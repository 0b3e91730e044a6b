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
    /// The directory.
    pub dir: PathBuf,
    /// Hyper-parameters from `config.json`.
    pub config: Config,
    files: Vec<PathBuf>,
    tensors: HashMap<String, StEntry>,
}

/// Largest safetensors header we accept (the format's reference reader uses the same bound).
const MAX_HEADER: u64 = 100 << 20;

impl SafetensorsCheckpoint {
    /// Reads `config.json` and the headers of all `*.safetensors` files in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let json = std::fs::read_to_string(&config_path)
            .map_err(|source| Error::Io { path: config_path.clone(), source })?;
        let config = Config::from_hf_json(&json)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| Error::Io { path: dir.clone(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Io {
                path: dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no *.safetensors file in the model directory",
                ),
            });
        }
        let mut tensors = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            read_header(path, i, &mut tensors)?;
        }
        Ok(Self { dir, config, files, tensors })
    }

    /// Whether a tensor of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
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
        let path = &self.files[e.file];
        let io = |source| Error::Io { path: path.clone(), source };
        let mut f = File::open(path).map_err(io)?;
        f.seek(SeekFrom::Start(e.start)).map_err(io)?;
        let mut bytes = vec![0u8; e.len as usize];
        f.read_exact(&mut bytes).map_err(io)?;
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, device)?;
        Ok(t.to_dtype(dtype)?)
    }
}

fn read_header(path: &Path, file: usize, out: &mut HashMap<String, StEntry>) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let bad = |reason: String| Error::BadSafetensors { path: path.to_path_buf(), reason };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!("header length {n} does not fit in the file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + n;
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
        if end < begin || want != Some(end - begin) || data_start + end > file_len {
            return Err(bad(format!("tensor '{name}' has inconsistent offsets {begin}..{end}")));
        }
        out.insert(
            name,
            StEntry { file, dtype, shape: info.shape, start: data_start + begin, len: end - begin },
        );
    }
    Ok(())
}

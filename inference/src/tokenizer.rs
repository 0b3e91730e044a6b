//! Tokenizer, chat template and streaming detokenization.
//!
//! For GGUF models the tokenizer is rebuilt from the metadata (`tokenizer.ggml.*`): a byte-level
//! BPE (`tokenizer.ggml.model = "gpt2"`) with the vocabulary, the merges and the special tokens,
//! and the pre-tokenizer llama.cpp associates with `tokenizer.ggml.pre`. Safetensors models use
//! the `tokenizer.json` beside them.

use crate::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;
use std::path::Path;

/// The regular expression GPT-2 style byte-level BPEs split words with.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regular expression.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How prompts are wrapped for chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen and others).
    ChatMl {
        /// The system message used when the caller gives none (SmolLM2's template has one).
        default_system: Option<String>,
    },
}

/// One message of a conversation, for [`ChatTemplate::render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    /// `system`, `user` or `assistant` (written into the template as given).
    pub role: &'a str,
    /// The message's text.
    pub content: &'a str,
}

impl<'a> ChatMessage<'a> {
    /// A message with this role and text.
    pub fn new(role: &'a str, content: &'a str) -> Self {
        Self { role, content }
    }
}

impl ChatTemplate {
    /// Formats a single-turn conversation ready for the assistant's answer: the same as
    /// [`render`](Self::render) of `system` (when given) and `user`.
    pub fn apply(&self, system: Option<&str>, user: &str) -> String {
        let mut messages = Vec::with_capacity(2);
        if let Some(sys) = system {
            messages.push(ChatMessage::new("system", sys));
        }
        messages.push(ChatMessage::new("user", user));
        self.render(&messages)
    }

    /// Formats a conversation (any number of turns) ready for the assistant's answer. As in
    /// SmolLM2's template, the default system message comes first when the conversation does
    /// not open with a system message of its own.
    pub fn render(&self, messages: &[ChatMessage<'_>]) -> String {
        match self {
            Self::ChatMl { default_system } => {
                let mut s = String::new();
                let opens_with_system = messages.first().is_some_and(|m| m.role == "system");
                if let (false, Some(sys)) = (opens_with_system, default_system) {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                s.push_str("<|im_start|>assistant\n");
                s
            }
        }
    }
}

/// A model's tokenizer with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    chat: Option<ChatTemplate>,
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    v.to_vec()
        .map_err(|e| Error::Tokenizer(format!("{key}: {e}")))?
        .iter()
        .map(|s| s.to_string().cloned().map_err(|e| Error::Tokenizer(format!("{key}: {e}"))))
        .collect()
}

fn id(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

impl Tokenizer {
    /// Rebuilds the tokenizer from GGUF metadata.
    pub fn from_gguf(ct: &Content) -> Result<Self> {
        let get = |k: &str| {
            ct.metadata.get(k).ok_or_else(|| Error::Tokenizer(format!("GGUF metadata lacks '{k}'")))
        };
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .clone();
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2'); \
                 put a tokenizer.json beside the model"
            )));
        }
        let tokens = strings(get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let merges = strings(get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "default".into());
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": true});
        // As llama.cpp's llama-vocab.cpp maps `tokenizer.ggml.pre` to split expressions.
        let pre_tokenizer = match pre.as_str() {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]}),
            "llama3" | "llama-bpe" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
                 "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}]}),
            "default" | "gpt2" | "gpt-2" => byte_level,
            other => {
                tracing::warn!(target: "inference::tokenizer", pre = other,
                    "unknown GGUF pre-tokenizer; using GPT-2's ({GPT2_REGEX})");
                byte_level
            }
        };
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let merges: Vec<serde_json::Value> = merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(Error::Tokenizer(format!("merge '{m}' is not two tokens"))),
            })
            .collect::<Result<_>>()?;
        // Control (3) and user-defined (4) tokens are matched whole, before BPE.
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": types[i] == 3})
            })
            .collect();
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added, "normalizer": null, "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e| Error::Tokenizer(format!("building from GGUF metadata: {e}")))?;
        let eos = id(ct, "tokenizer.ggml.eos_token_id");
        let template = ct.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok());
        let chat = template.and_then(|t| chat_template_from(t));
        let mut eos: Vec<u32> = eos.into_iter().collect();
        // ChatML models end a turn with <|im_end|>, and some GGUFs name another EOS.
        for stop in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(i) = tokens.iter().position(|t| t == stop) {
                if !eos.contains(&(i as u32)) {
                    eos.push(i as u32);
                }
            }
        }
        Ok(Self {
            inner,
            eos,
            bos: id(ct, "tokenizer.ggml.bos_token_id"),
            add_bos: ct
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            chat,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; `eos` lists the end-of-sequence ids.
    pub fn from_file(path: &Path, eos: Vec<u32>) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes, eos)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// A Hugging Face `tokenizer.json`'s bytes, with these end-of-sequence ids.
    pub fn from_bytes(json: &[u8], eos: Vec<u32>) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let chat = inner
            .token_to_id("<|im_start|>")
            .map(|_| ChatTemplate::ChatMl { default_system: None });
        Ok(Self { inner, eos, bos: None, add_bos: false, chat })
    }

    /// Encodes text (special tokens in it, such as `<|im_start|>`, are recognized).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Token ids that end a generation.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The chat template, when the model has one we support.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn chat_template_from(t: &str) -> Option<ChatTemplate> {
    if !t.contains("<|im_start|>") {
        return None;
    }
    // SmolLM2's template inserts this system message when the conversation has none.
    let smol = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    Some(ChatTemplate::ChatMl { default_system: t.contains(smol).then(|| smol.to_string()) })
}

/// Turns generated tokens into text as they come, never splitting a multi-byte UTF-8 character
/// that spans tokens: text is released only once it decodes without a replacement character at
/// its end.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<Option<String>> {
        self.tokens.push(token);
        let before = tokenizer.decode(&self.tokens[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.tokens[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let delta = match now.get(before.len()..) {
                Some(d) if now.starts_with(&before) => d.to_string(),
                // The decoder changed earlier text (a cleanup rule): emit what follows the part
                // both decodings share.
                _ => {
                    let common = now
                        .char_indices()
                        .zip(before.chars())
                        .take_while(|((_, a), b)| a == b)
                        .last()
                        .map(|((i, c), _)| i + c.len_utf8())
                        .unwrap_or(0);
                    now[common..].to_string()
                }
            };
            self.prefix = self.read;
            self.read = self.tokens.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }

    /// Whatever is still held back (an incomplete character at the very end), decoded lossily.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.tokens[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.tokens[self.prefix..])?;
        self.prefix = self.tokens.len();
        self.read = self.tokens.len();
        Ok(now.get(before.len()..).unwrap_or("").to_string())
    }
}

/// Holds back streamed text that could be the start of a stop string, and cuts the text at the
/// first stop string.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    /// Stops on any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds streamed text; returns the text safe to show and whether a stop string was hit (the
    /// stop string itself and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(cut) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..cut].to_string();
            self.pending.clear();
            return (out, true);
        }
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > hold && self.pending.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        let keep_from = self.pending.len() - hold;
        let out = self.pending[..keep_from].to_string();
        self.pending.drain(..keep_from);
        (out, false)
    }

    /// Text still held back, released at the end of the generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_hold_back_prefixes() {
        let mut s = StopStrings::new(&["END".to_string(), "\n\n".to_string()]);
        assert_eq!(s.push("hello E"), ("hello ".to_string(), false));
        assert_eq!(s.push("N"), (String::new(), false));
        assert_eq!(s.push("x"), ("ENx".to_string(), false));
        assert_eq!(s.push(" more\n"), (" more".to_string(), false));
        assert_eq!(s.push("\nafter"), (String::new(), true));
        let mut s = StopStrings::new(&["é!".to_string()]);
        assert_eq!(s.push("caf"), ("caf".to_string(), false));
        assert_eq!(s.push("é"), (String::new(), false));
        assert_eq!(s.finish(), "é");
    }

    #[test]
    fn chatml() {
        let t = ChatTemplate::ChatMl { default_system: Some("S".into()) };
        assert_eq!(
            t.apply(None, "hi"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(t.apply(Some("X"), "hi").starts_with("<|im_start|>system\nX<|im_end|>"));
        let none = ChatTemplate::ChatMl { default_system: None };
        assert_eq!(
            none.apply(None, "hi"),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_conversation() {
        let t = ChatTemplate::ChatMl { default_system: Some("S".into()) };
        let turns = [
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "hello"),
            ChatMessage::new("user", "bye"),
        ];
        assert_eq!(
            t.render(&turns),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
             <|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // A system message of the conversation's own replaces the default; a single turn
        // renders as `apply` does.
        let own = [ChatMessage::new("system", "X"), ChatMessage::new("user", "hi")];
        assert_eq!(t.render(&own), t.apply(Some("X"), "hi"));
        assert_eq!(t.render(&turns[..1]), t.apply(None, "hi"));
    }
}

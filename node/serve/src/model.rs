//! The model a node serves: its description as a manifest, the stage it loads, and which
//! layers `--layers` picks (a range, or the range the network serves least).

use crate::error::{Error, Result};
use crate::store::Store;
use crate::u32_of;
use bitorch_inference::{Checkpoint, GgufWeights, LoadOptions, Stage, Tokenizer};
use bitorch_runtime::models::Manifest;
use std::ops::Range;

/// A model opened to serve: its checkpoint, tokenizer and manifest, before a stage is loaded.
pub struct Described {
    ckpt: Checkpoint,
    /// The model's tokenizer (from the GGUF metadata).
    pub tokenizer: Tokenizer,
    /// The model's manifest.
    pub manifest: Manifest,
    /// Its context window.
    pub context_length: u32,
    /// Its layers.
    pub num_layers: u32,
}

/// What `--layers` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerChoice {
    /// These layers.
    Range(Range<usize>),
    /// `auto` (`span` None) or `auto:N`: the range the network serves least, chosen once the
    /// node sees the other workers ([`least_served`]).
    Auto {
        /// How many layers; `None`: fill the largest unserved gap, or all layers.
        span: Option<u32>,
    },
}

/// Parses `--layers` for a model of `n` layers: `START..END`, `auto` or `auto:N` (all layers
/// when `None`).
pub fn parse_layers(s: Option<&str>, n: usize) -> Result<LayerChoice> {
    let Some(s) = s else { return Ok(LayerChoice::Range(0..n)) };
    let bad = |reason: String| Error::Layers { given: s.to_string(), reason };
    if let Some(rest) = s.strip_prefix("auto") {
        let span = match rest.strip_prefix(':') {
            None if rest.is_empty() => None,
            None => return Err(bad("expected auto or auto:N".into())),
            Some(k) => {
                let k: u32 = k.trim().parse().map_err(|_| bad("N is not a number".into()))?;
                if k == 0 || k as usize > n {
                    return Err(bad(format!("the model has {n} layers; pick 1 <= N <= {n}")));
                }
                Some(k)
            }
        };
        return Ok(LayerChoice::Auto { span });
    }
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| bad("expected START..END (e.g. 0..10), auto or auto:N".into()))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad("START is not a number".into()))?,
        b.trim().parse().map_err(|_| bad("END is not a number".into()))?,
    );
    if a >= b || b > n {
        return Err(bad(format!(
            "the model has {n} layers; pick START..END with START < END <= {n}"
        )));
    }
    Ok(LayerChoice::Range(a..b))
}

/// The layers of a model of `n` layers the network serves least, given the layer ranges the
/// workers found serve (as Petals places a new server's blocks):
///
/// - `span` of `Some(k)`: the `k` consecutive layers whose least-served layer has the fewest
///   workers, then the fewest workers over the whole window, then the lowest start;
/// - `None`: the longest run of layers no worker serves (the first of the longest), so that
///   the model becomes complete; when every layer is served, all of them.
pub fn least_served(n: u32, span: Option<u32>, served: &[Range<u32>]) -> Range<u32> {
    let mut count = vec![0u32; n as usize];
    for r in served {
        for c in count.iter_mut().take(r.end.min(n) as usize).skip(r.start as usize) {
            *c += 1;
        }
    }
    match span {
        Some(k) => {
            let k = k.clamp(1, n.max(1));
            let best = (0..=n.saturating_sub(k))
                .min_by_key(|&s| {
                    let w = &count[s as usize..(s + k) as usize];
                    (w.iter().min().copied().unwrap_or(0), w.iter().sum::<u32>(), s)
                })
                .unwrap_or(0);
            best..best + k
        }
        None => {
            let (mut best, mut start) = (0..0, None);
            for (i, &c) in count.iter().chain(std::iter::once(&1)).enumerate() {
                let i = i as u32;
                match (c, start) {
                    (0, None) => start = Some(i),
                    (0, Some(_)) => {}
                    (_, Some(s)) => {
                        if i - s > best.end - best.start {
                            best = s..i;
                        }
                        start = None;
                    }
                    (_, None) => {}
                }
            }
            if best.is_empty() {
                0..n
            } else {
                best
            }
        }
    }
}

impl Described {
    /// The model `manifest` as the store holds it: its tokenizer and what loading a stage
    /// needs, read from the shared chunk (no weights read yet).
    pub fn from_store(store: &Store, manifest: &Manifest) -> Result<Self> {
        let ckpt = store.checkpoint(manifest)?;
        let tokenizer = match &ckpt {
            Checkpoint::Gguf(g) => Tokenizer::from_gguf(&g.content)
                .map_err(|source| Error::Model { path: g.path.clone(), source })?,
            Checkpoint::Safetensors(s) => {
                let model = |source| Error::Model { path: s.dir.clone(), source };
                let eos = bitorch_inference::pipeline::eos_from_config(&s.config_json);
                Tokenizer::from_bytes(&s.tokenizer_json().map_err(model)?, eos).map_err(model)?
            }
        };
        let context_length = u32_of(ckpt.config().context_length);
        Ok(Self {
            ckpt,
            tokenizer,
            manifest: manifest.clone(),
            context_length,
            num_layers: manifest.layer_count,
        })
    }
    /// Loads the stage of `layers` (our integer kernels, the engine's default).
    pub fn load_stage(&self, layers: Range<usize>) -> Result<Stage> {
        self.load_stage_with(layers, GgufWeights::Int16)
    }

    /// Loads `layers` with GGUF weights run as `weights` (workers and auditors run
    /// [`GgufWeights::Int16`]; another way is another computation).
    pub fn load_stage_with(&self, layers: Range<usize>, weights: GgufWeights) -> Result<Stage> {
        let options = LoadOptions { gguf: weights, ..Default::default() };
        Ok(Stage::load(&self.ckpt, layers, &options)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::single_range_in_vec_init)]
    use super::{least_served, parse_layers, LayerChoice};

    #[test]
    fn layers_parse_and_check_bounds() {
        let range = |r| LayerChoice::Range(r);
        assert_eq!(parse_layers(None, 30).unwrap(), range(0..30));
        assert_eq!(parse_layers(Some("10..20"), 30).unwrap(), range(10..20));
        assert!(parse_layers(Some("20..10"), 30).is_err());
        assert!(parse_layers(Some("0..31"), 30).is_err());
        assert!(parse_layers(Some("5"), 30).is_err());
        assert_eq!(parse_layers(Some("auto"), 30).unwrap(), LayerChoice::Auto { span: None });
        assert_eq!(
            parse_layers(Some("auto:10"), 30).unwrap(),
            LayerChoice::Auto { span: Some(10) }
        );
        for bad in ["auto:0", "auto:31", "auto:x", "autox", "auto10"] {
            assert!(parse_layers(Some(bad), 30).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_layers_pick_the_least_served_range() {
        // Nobody yet: everything, or the first k layers.
        assert_eq!(least_served(30, None, &[]), 0..30);
        assert_eq!(least_served(30, Some(10), &[]), 0..10);
        // The gap 10..20 is filled.
        assert_eq!(least_served(30, None, &[0..10, 20..30]), 10..20);
        assert_eq!(least_served(30, Some(10), &[0..10, 20..30]), 10..20);
        // The longest of two gaps; a gap at the end counts.
        assert_eq!(least_served(30, None, &[0..5, 8..25]), 25..30);
        assert_eq!(least_served(30, None, &[3..30]), 0..3);
        // All served: a full replica without a span; with one, the thinnest window.
        assert_eq!(least_served(30, None, &[0..30]), 0..30);
        assert_eq!(least_served(30, Some(10), &[0..30, 0..10, 10..20, 0..20]), 20..30);
        // A window that overlaps the gap beats one that does not, and ranges past n are cut.
        assert_eq!(least_served(30, Some(8), &[0..12, 16..40]), 8..16);
        assert_eq!(least_served(30, Some(30), &[0..12]), 0..30);
    }
}

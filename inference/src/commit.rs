//! Re-executing a stage on committed inputs, for the auditor of a commitment.

use crate::Stage;
use bitorch_commitment::{token_of, Reexecute};
use candle_core::{DType, Tensor};

impl Reexecute for Stage {
    /// One batched pass over the committed inputs from an empty cache, with the batch-invariant
    /// attention kernel that committed sessions use (f32 inputs are cast to the stage's dtype,
    /// outputs back to f32; a first stage's inputs are token rows, embedded first).
    fn reexecute(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
        let run = || -> crate::Result<Vec<Vec<f32>>> {
            let hidden = self.config().hidden_size;
            if inputs.iter().any(|x| x.len() != hidden) {
                return Err(crate::Error::StageInput(format!(
                    "committed inputs must have {hidden} floats"
                )));
            }
            let x = if self.is_first() {
                // A first stage commits to the token ids it received.
                let vocab = self.config().vocab_size;
                let ids: Option<Vec<u32>> = inputs.iter().map(|r| token_of(r, vocab)).collect();
                let ids = ids.ok_or_else(|| {
                    crate::Error::StageInput("a first stage's inputs must be token rows".into())
                })?;
                self.embed(&Tensor::new(ids.as_slice(), self.device())?.unsqueeze(0)?)?
            } else {
                let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
                Tensor::from_vec(flat, (1, inputs.len(), hidden), self.device())?
                    .to_dtype(self.dtype())?
            };
            let mut cache = self.new_cache_with(crate::model::Kernel::BatchInvariant);
            let y = self.forward_layers(&x, 0, &mut cache)?;
            Ok(y.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
        };
        run().map_err(|e| e.to_string())
    }

    /// The final norm and LM head over each committed output, one row at a time as the worker
    /// ran it (f32 rows cast to the stage's dtype, logits back to f32).
    fn logits(&self, outputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
        let run = || -> crate::Result<Vec<Vec<f32>>> {
            let hidden = self.config().hidden_size;
            outputs
                .iter()
                .map(|row| {
                    if row.len() != hidden {
                        return Err(crate::Error::StageInput(format!(
                            "committed outputs must have {hidden} floats"
                        )));
                    }
                    let x = Tensor::from_vec(row.clone(), (1, 1, hidden), self.device())?
                        .to_dtype(self.dtype())?;
                    Ok(self.head(&x)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
                })
                .collect()
        };
        run().map_err(|e| e.to_string())
    }
}

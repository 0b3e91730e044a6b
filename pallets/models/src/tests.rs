use super::*;
use bitorch_pallet_support::MemoryState;

fn acc(n: u8) -> AccountId {
    AccountId::new([n; 32])
}

fn ctx_at(block_number: BlockNumber) -> Context {
    Context {
        block_number,
        genesis_hash: H256::zero(),
        author: acc(99),
        parent_hash: Default::default(),
    }
}

fn dispatch(s: &mut MemoryState, who: u8, call: &Call, at: BlockNumber) -> Result<(), Error> {
    support::transactional(s, |o| Pallet::dispatch(o, &acc(who), call, &ctx_at(at)))
}

fn layers(ranges: &[(u32, u32)]) -> Vec<Chunk> {
    ranges
        .iter()
        .map(|&(start, end)| Chunk {
            kind: ChunkKind::Layers { start, end },
            root: H256::repeat_byte(1),
            size: 10,
            piece_size: 4,
        })
        .collect()
}

#[test]
fn example_manifest_is_valid() {
    for n in [1, 2, 30, MAX_LAYERS] {
        let m = example_manifest(n);
        assert_eq!(m.validate(), Ok(()), "{n} layers");
        assert_eq!(m.chunks.len(), n as usize + 2);
    }
    assert!(example_manifest(0).validate().is_err());
}

#[test]
fn manifest_rules() {
    use ManifestError::*;
    let base = example_manifest(4);
    let check = |f: &dyn Fn(&mut Manifest), expected: ManifestError| {
        let mut m = base.clone();
        f(&mut m);
        assert_eq!(m.validate(), Err(expected));
    };
    check(&|m| m.name.clear(), NameLength { len: 0, max: MAX_NAME_LEN });
    check(&|m| m.name = vec![b'a'; 65], NameLength { len: 65, max: MAX_NAME_LEN });
    check(&|m| m.name = vec![0xff, 0xfe], NameNotUtf8);
    check(&|m| m.architecture.clear(), ArchitectureLength { len: 0, max: MAX_ARCHITECTURE_LEN });
    check(
        &|m| m.architecture = vec![b'a'; 33],
        ArchitectureLength { len: 33, max: MAX_ARCHITECTURE_LEN },
    );
    check(&|m| m.architecture = vec![0xc3], ArchitectureNotUtf8);
    check(&|m| m.hyper.hidden_size = 0, ZeroHyperParameter(HyperField::HiddenSize));
    check(&|m| m.hyper.intermediate_size = 0, ZeroHyperParameter(HyperField::IntermediateSize));
    check(&|m| m.hyper.num_attention_heads = 0, ZeroHyperParameter(HyperField::NumAttentionHeads));
    check(&|m| m.hyper.num_kv_heads = 0, ZeroHyperParameter(HyperField::NumKvHeads));
    check(&|m| m.hyper.vocab_size = 0, ZeroHyperParameter(HyperField::VocabSize));
    check(&|m| m.hyper.context_length = 0, ZeroHyperParameter(HyperField::ContextLength));
    check(&|m| m.hyper.rope_theta = 0, ZeroHyperParameter(HyperField::RopeTheta));
    check(&|m| m.hyper.rms_norm_eps_e9 = 0, ZeroHyperParameter(HyperField::RmsNormEpsE9));
    check(
        &|m| m.hyper.num_attention_heads = 3,
        HeadsDoNotDivideHidden { hidden_size: 64, heads: 3 },
    );
    check(&|m| m.hyper.num_kv_heads = 3, KvHeadsDoNotDivideHeads { heads: 4, kv_heads: 3 });
    check(&|m| m.layer_count = 0, LayerCount { layer_count: 0, max: MAX_LAYERS });
    check(&|m| m.layer_count = 1_025, LayerCount { layer_count: 1_025, max: MAX_LAYERS });
    check(&|m| m.chunks.clear(), ChunkCount { count: 0, max: MAX_CHUNKS });
    check(
        &|m| m.chunks = layers(&vec![(0, 4); MAX_CHUNKS + 1]),
        ChunkCount { count: MAX_CHUNKS + 1, max: MAX_CHUNKS },
    );
    check(&|m| m.chunks[1].size = 0, ZeroChunkSize { index: 1 });
    check(&|m| m.chunks[2].piece_size = 0, ZeroPieceSize { index: 2 });
    // Ranges: empty, reversed, past the end.
    check(
        &|m| m.chunks = layers(&[(0, 2), (2, 2), (2, 4)]),
        InvalidLayerRange { index: 1, start: 2, end: 2, layer_count: 4 },
    );
    check(
        &|m| m.chunks = layers(&[(0, 2), (3, 2)]),
        InvalidLayerRange { index: 1, start: 3, end: 2, layer_count: 4 },
    );
    check(
        &|m| m.chunks = layers(&[(0, 2), (2, 5)]),
        InvalidLayerRange { index: 1, start: 2, end: 5, layer_count: 4 },
    );
    // Unsorted, overlapping, gap, incomplete.
    check(
        &|m| m.chunks = layers(&[(2, 4), (0, 2)]),
        LayersNotContiguous { index: 0, start: 2, expected: 0 },
    );
    check(
        &|m| m.chunks = layers(&[(0, 3), (2, 4)]),
        LayersNotContiguous { index: 1, start: 2, expected: 3 },
    );
    check(
        &|m| m.chunks = layers(&[(0, 1), (2, 4)]),
        LayersNotContiguous { index: 1, start: 2, expected: 1 },
    );
    check(
        &|m| m.chunks = layers(&[(0, 1), (1, 3)]),
        LayersIncomplete { covered: 3, layer_count: 4 },
    );
    check(
        &|m| m.chunks.retain(|c| c.kind == ChunkKind::Head),
        LayersIncomplete { covered: 0, layer_count: 4 },
    );
    // One chunk spanning every layer is fine, in any position among the other chunks.
    let mut m = base.clone();
    m.chunks = layers(&[(0, 4)]);
    m.chunks.push(base.chunks[0].clone());
    assert_eq!(m.validate(), Ok(()));
}

#[test]
fn register_retire() {
    let mut s = MemoryState::default();
    let m = example_manifest(4);
    let id = m.id();
    dispatch(&mut s, 1, &Call::Register { manifest: m.clone() }, 5).unwrap();
    let r = Pallet::model(&s, &id).unwrap().unwrap();
    assert_eq!(r.owner, acc(1));
    assert_eq!(r.manifest_hash, blake2_256(&m.encode()));
    assert_eq!((r.status.clone(), r.registered_at, r.updated_at), (ModelStatus::Active, 5, 5));
    assert_eq!(Pallet::model_ids(&s).unwrap(), vec![id]);
    assert_eq!(Pallet::active_layer_count(&s, &id).unwrap(), Some(4));

    // The same content under another name, by anyone, is the same model: already there.
    let mut renamed = m.clone();
    renamed.name = b"another label".to_vec();
    assert_eq!(renamed.id(), id);
    assert_eq!(
        dispatch(&mut s, 2, &Call::Register { manifest: renamed }, 6),
        Err(Error::ModelExists(id))
    );
    // Other content (another chunk root: another quantization, say) is another model.
    let mut other = m.clone();
    other.chunks[1].root = H256::repeat_byte(7);
    assert_ne!(other.id(), id);
    dispatch(&mut s, 2, &Call::Register { manifest: other.clone() }, 7).unwrap();
    assert_eq!(Pallet::model_ids(&s).unwrap(), vec![id, other.id()]);

    dispatch(&mut s, 1, &Call::Retire { id }, 9).unwrap();
    let r = Pallet::model(&s, &id).unwrap().unwrap();
    assert_eq!((r.status, r.updated_at), (ModelStatus::Retired, 9));
    assert_eq!(Pallet::active_layer_count(&s, &id).unwrap(), None);
    assert_eq!(Pallet::active_layer_count(&s, &H256::zero()).unwrap(), None);
    assert_eq!(Pallet::model_ids(&s).unwrap().len(), 2);
}

#[test]
fn rejections_change_nothing() {
    let mut s = MemoryState::default();
    let m = example_manifest(4);
    let id = m.id();
    dispatch(&mut s, 1, &Call::Register { manifest: m.clone() }, 1).unwrap();
    let retired = example_manifest(2);
    let retired_id = retired.id();
    dispatch(&mut s, 1, &Call::Register { manifest: retired.clone() }, 1).unwrap();
    dispatch(&mut s, 1, &Call::Retire { id: retired_id }, 1).unwrap();

    let mut invalid = m.clone();
    invalid.layer_count = 5;
    let mut renamed = m.clone();
    renamed.name = b"other".to_vec();
    let mut huge_pieces = m.clone();
    huge_pieces.chunks[1].piece_size = MAX_PIECE_SIZE + 1;
    let mut too_many_pieces = m.clone();
    too_many_pieces.chunks[1].size = MAX_PIECES_PER_CHUNK * 16 + 1;
    too_many_pieces.chunks[1].piece_size = 16;
    let before = s.clone();
    let cases = [
        (1, Call::Register { manifest: m.clone() }, Error::ModelExists(id)),
        (1, Call::Register { manifest: retired.clone() }, Error::ModelExists(retired_id)),
        (
            2,
            Call::Register { manifest: invalid.clone() },
            Error::InvalidManifest(ManifestError::LayersIncomplete { covered: 4, layer_count: 5 }),
        ),
        (2, Call::Register { manifest: renamed }, Error::ModelExists(id)),
        (
            2,
            Call::Register { manifest: huge_pieces.clone() },
            Error::InvalidManifest(ManifestError::Pieces {
                index: 1,
                piece_size: MAX_PIECE_SIZE + 1,
                size: huge_pieces.chunks[1].size,
            }),
        ),
        (
            2,
            Call::Register { manifest: too_many_pieces },
            Error::InvalidManifest(ManifestError::Pieces {
                index: 1,
                piece_size: 16,
                size: MAX_PIECES_PER_CHUNK * 16 + 1,
            }),
        ),
        (2, Call::Retire { id }, Error::NotOwner),
        (1, Call::Retire { id: retired_id }, Error::Retired),
        (1, Call::Retire { id: H256::zero() }, Error::UnknownModel(H256::zero())),
    ];
    for (who, call, err) in cases {
        // Without an overlay: the pallet validates before it writes.
        assert_eq!(Pallet::dispatch(&mut s, &acc(who), &call, &ctx_at(3)), Err(err));
        assert_eq!(s, before, "{call:?} changed state");
    }
}

#[test]
fn registry_is_bounded() {
    let mut s = MemoryState::default();
    let ids: Vec<ModelId> = (0..MAX_MODELS).map(|i| H256::from_low_u64_be(i.into())).collect();
    support::put(&mut s, ids_key(), &ids);
    let before = s.clone();
    assert_eq!(
        dispatch(&mut s, 1, &Call::Register { manifest: example_manifest(1) }, 1),
        Err(Error::TooManyModels { max: MAX_MODELS })
    );
    assert_eq!(s, before);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn chunk() -> impl Strategy<Value = Chunk> {
        let kind = prop_oneof![
            Just(ChunkKind::Embeddings),
            (any::<u32>(), any::<u32>()).prop_map(|(start, end)| ChunkKind::Layers { start, end }),
            Just(ChunkKind::Head),
            Just(ChunkKind::Shared),
        ];
        (kind, any::<[u8; 32]>(), any::<u64>(), any::<u32>()).prop_map(
            |(kind, root, size, piece_size)| Chunk { kind, root: H256(root), size, piece_size },
        )
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        (
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 0..40),
            any::<[u32; 8]>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            prop::collection::vec(chunk(), 0..20),
        )
            .prop_map(|(name, architecture, h, layer_count, tok, chunks)| Manifest {
                name,
                architecture,
                hyper: HyperParams {
                    hidden_size: h[0],
                    intermediate_size: h[1],
                    num_attention_heads: h[2],
                    num_kv_heads: h[3],
                    vocab_size: h[4],
                    context_length: h[5],
                    rope_theta: h[6],
                    rms_norm_eps_e9: h[7],
                },
                layer_count,
                tokenizer_hash: H256(tok),
                chunks,
            })
    }

    proptest! {
        #[test]
        fn manifest_round_trips(m in manifest()) {
            let bytes = m.encode();
            prop_assert_eq!(Manifest::decode(&mut &bytes[..]).unwrap(), m.clone());
            let call = Call::Register { manifest: m };
            prop_assert_eq!(Call::decode(&mut &call.encode()[..]).unwrap(), call);
        }

        #[test]
        fn example_manifests_validate_and_round_trip(n in 1u32..=64) {
            let m = example_manifest(n);
            prop_assert_eq!(m.validate(), Ok(()));
            prop_assert_eq!(Manifest::decode(&mut &m.encode()[..]).unwrap(), m);
        }
    }
}

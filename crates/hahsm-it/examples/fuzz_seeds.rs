//! Writes the seed corpora of the fuzz targets in `fuzz/corpus/`: real
//! encoded messages and records, so the fuzzer starts from valid inputs.
//!   cargo run -p hahsm-it --example fuzz_seeds
use hahsm_proto::client::{Hello, Request, RequestFrame};
use hahsm_proto::peer::{PeerRequest, PeerRequestFrame, ReplicaState};
use hahsm_proto::{encode, Secret};
use hahsm_replica::Replica;
use hahsm_token::oplog::{NewObject, Op, OpBody, Stamp};
use hahsm_token::{ck, AttrValue, Hlc, MechParams, Mechanism, Ouid, Template};
use std::path::Path;

fn write(dir: &str, name: &str, bytes: &[u8]) {
    let d = Path::new("fuzz/corpus").join(dir);
    std::fs::create_dir_all(&d).expect("corpus dir");
    std::fs::write(d.join(name), bytes).expect("seed written");
}

fn main() {
    let template = Template::new()
        .with(ck::CKA_LABEL, AttrValue::Bytes(b"key".to_vec()))
        .with(ck::CKA_TOKEN, AttrValue::Bool(true))
        .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(32));
    write(
        "wire",
        "hello",
        &encode(&Hello {
            protocol_version: 1,
            client_software: "seed".into(),
        }),
    );
    let frames = [
        Request::Login {
            partition: "p".into(),
            user_type: 1,
            pin: Secret::from("1234"),
        },
        Request::GenerateKey {
            partition: "p".into(),
            mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
            template: template.clone(),
            op_id: [1; 16],
        },
        Request::Sign {
            partition: "p".into(),
            key: Ouid([2; 16]),
            mechanism: Mechanism::with(
                ck::CKM_SHA256_RSA_PKCS_PSS,
                MechParams::Pss {
                    hash: ck::CKM_SHA256,
                    mgf: ck::CKG_MGF1_SHA256,
                    salt_len: 32,
                },
            ),
            data: vec![0; 32],
        },
    ];
    for (i, request) in frames.into_iter().enumerate() {
        write(
            "wire",
            &format!("request-{i}"),
            &encode(&RequestFrame {
                id: i as u64 + 1,
                deadline_ms: 1000,
                issued_unix_ms: 1_800_000_000_000,
                request,
            }),
        );
    }
    let op = Op {
        seq: 1,
        stamp: Stamp {
            hlc: Hlc {
                wall_ms: 1,
                logical: 0,
            },
            origin: 7,
        },
        client_op_id: Some([3; 16]),
        body: OpBody::Create {
            objects: vec![NewObject {
                ouid: Ouid([4; 16]),
                attrs: template,
                sealed_secret: Some(vec![5; 40]),
            }],
        },
    };
    write(
        "stored_state",
        "op",
        &postcard::to_allocvec(&op).expect("encodes"),
    );
    let mut replica: Replica<Vec<u8>> = Replica::new();
    replica.apply(&op);
    if let Some(state) = replica.get(&Ouid([4; 16])) {
        write(
            "stored_state",
            "state",
            &postcard::to_allocvec(state).expect("encodes"),
        );
    }
    let heartbeat = PeerRequest::Heartbeat {
        group_id: [6; 16],
        epoch: 2,
        state: ReplicaState {
            serial: 7,
            version_vector: vec![(7, 1)],
            live_objects: 1,
            digest: [0; 32],
            policies: hahsm_proto::peer::PolicySnapshot {
                hsm: vec![(7, 1), (16, 1)],
                partition: vec![(15, 10)],
            },
            metrics: "http://127.0.0.1:9792/metrics".into(),
            wall_ms: 1_700_000_000_000,
        },
    };
    write(
        "peer",
        "heartbeat",
        &encode(&PeerRequestFrame {
            id: 1,
            deadline_ms: 1000,
            request: heartbeat,
        }),
    );
    let push = PeerRequest::Push {
        group_id: [6; 16],
        ops: vec![op],
    };
    write(
        "peer",
        "push",
        &encode(&PeerRequestFrame {
            id: 2,
            deadline_ms: 1000,
            request: push,
        }),
    );
    println!("seed corpora written under fuzz/corpus/");
}

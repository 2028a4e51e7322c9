//! What custody reads from outside: domain shares (the member combines what
//! the operator's files hold), journal lines (the CLI verifies what a
//! member's file holds) and a backup file's framing (the CLI reads it, the
//! member parses each part). The first byte picks how the rest is cut into
//! shares.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&cut, rest)) = data.split_first() {
        let size = usize::from(cut).max(1);
        let shares: Vec<&[u8]> = rest.chunks(size).collect();
        let _ = hahsm_crypto::shares::combine(&shares);
    }
    use hahsm_proto::backup_file;
    let _ = backup_file::parse_head(backup_file::MAGIC_V2, data);
    let _ = backup_file::parse_head_prefix(backup_file::MAGIC_V1, data);
    let _ = backup_file::parse_record(data);
    let mut file = data;
    if backup_file::read_head(&mut file).is_ok() {
        while let Ok(Some(record)) = backup_file::read_record(&mut file) {
            let _ = backup_file::parse_record(&record);
        }
    }
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let head = hahsm_proto::journal::JournalHead {
        count: lines.len() as u64,
        hash: String::new(),
    };
    let _ = hahsm_proto::journal::verify(&lines, Some(&head), |b| {
        let mut out = [0u8; 32];
        for (i, x) in b.iter().enumerate() {
            out[i % 32] ^= x;
        }
        out
    });
});

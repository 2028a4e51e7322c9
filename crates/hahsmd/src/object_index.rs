//! Indexes of a partition's live objects by the attributes applications
//! find them by (class, key type, id, label, subject, issuer and serial
//! number): for each value, the objects that hold it, in OUID order. A find
//! walks the smallest set its template names instead of every object, so a
//! look-up by id among a million keys costs what it costs among ten. No I/O,
//! no locks: the partition keeps it beside its objects, under their lock.
use hahsm_token::{ck, AttrType, AttrValue, Ouid, Template};
use std::collections::{BTreeSet, HashMap};

/// The attributes indexed. Others in a template only filter the candidates
/// that these give.
pub const INDEXED: [AttrType; 7] = [
    ck::CKA_CLASS,
    ck::CKA_KEY_TYPE,
    ck::CKA_ID,
    ck::CKA_LABEL,
    ck::CKA_SUBJECT,
    ck::CKA_ISSUER,
    ck::CKA_SERIAL_NUMBER,
];

/// A value as the index keys it: the same bytes for equal values of one
/// attribute. Values of another kind than their attribute's (which match
/// nothing) may share a key with a real one; the caller's match of the whole
/// template sorts those out.
fn key_of(value: &AttrValue) -> Option<Vec<u8>> {
    match value {
        AttrValue::Ulong(v) => Some(v.to_le_bytes().to_vec()),
        AttrValue::Bytes(b) => Some(b.clone()),
        _ => None,
    }
}

#[derive(Default)]
pub struct ObjectIndex {
    by_value: HashMap<(AttrType, Vec<u8>), BTreeSet<Ouid>>,
}

/// Where a find looks: the objects holding one indexed value, or every
/// object when the template names no indexed attribute.
pub enum Candidates<'a> {
    Some(&'a BTreeSet<Ouid>),
    None,
    All,
}

impl ObjectIndex {
    pub fn insert(&mut self, ouid: Ouid, attrs: &Template) {
        for attr in INDEXED {
            if let Some(key) = attrs.get(attr).and_then(key_of) {
                self.by_value.entry((attr, key)).or_default().insert(ouid);
            }
        }
    }

    /// Takes `ouid` out under the values `attrs` gave it when inserted.
    pub fn remove(&mut self, ouid: &Ouid, attrs: &Template) {
        for attr in INDEXED {
            if let Some(key) = attrs.get(attr).and_then(key_of) {
                let slot = (attr, key);
                if let Some(same) = self.by_value.get_mut(&slot) {
                    same.remove(ouid);
                    if same.is_empty() {
                        self.by_value.remove(&slot);
                    }
                }
            }
        }
    }

    /// The fewest objects that hold every indexed value `filter` names:
    /// the smallest of their sets, `None` when one is empty.
    pub fn candidates(&self, filter: &Template) -> Candidates<'_> {
        let mut best: Candidates<'_> = Candidates::All;
        for attr in INDEXED {
            let Some(value) = filter.get(attr) else {
                continue;
            };
            let Some(set) = key_of(value).and_then(|key| self.by_value.get(&(attr, key))) else {
                return Candidates::None;
            };
            match best {
                Candidates::Some(b) if b.len() <= set.len() => {}
                _ => best = Candidates::Some(set),
            }
        }
        best
    }

    /// How many distinct values are indexed (for tests).
    #[cfg(test)]
    pub fn values(&self) -> usize {
        self.by_value.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(class: u64, id: &[u8], label: &str) -> Template {
        Template::new()
            .with(ck::CKA_CLASS, AttrValue::Ulong(class))
            .with(ck::CKA_ID, AttrValue::Bytes(id.to_vec()))
            .with(ck::CKA_LABEL, AttrValue::Bytes(label.as_bytes().to_vec()))
    }

    fn set(c: Candidates<'_>) -> Option<Vec<Ouid>> {
        match c {
            Candidates::Some(s) => Some(s.iter().copied().collect()),
            Candidates::None => Some(Vec::new()),
            Candidates::All => None,
        }
    }

    #[test]
    fn a_find_walks_the_smallest_set_its_template_names() {
        let mut index = ObjectIndex::default();
        for i in 0..10u8 {
            index.insert(Ouid([i; 16]), &object(ck::CKO_PRIVATE_KEY, &[i % 2], "k"));
        }
        index.insert(Ouid([20; 16]), &object(ck::CKO_CERTIFICATE, &[1], "c"));
        let by = |t: Template| set(index.candidates(&t));
        // Class and label give ten; the id narrows to the five odd ones.
        let filter = object(ck::CKO_PRIVATE_KEY, &[1], "k");
        let odd: Vec<Ouid> = (0..10u8).filter(|i| i % 2 == 1).map(|i| Ouid([i; 16])).collect();
        let mut with_cert = odd.clone();
        with_cert.push(Ouid([20; 16]));
        assert_eq!(by(filter), Some(with_cert), "the id's set is the smallest");
        let label_c = Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(b"c".to_vec()));
        assert_eq!(by(label_c), Some(vec![Ouid([20; 16])]));
        // A value nobody holds: nothing to look at.
        let absent = Template::new().with(ck::CKA_ID, AttrValue::Bytes(b"zz".to_vec()));
        assert_eq!(by(absent), Some(Vec::new()));
        // No indexed attribute: every object.
        let sign = Template::new().with(ck::CKA_SIGN, AttrValue::Bool(true));
        assert_eq!(by(sign), None);
    }

    #[test]
    fn removal_takes_an_object_out_of_every_set_and_leaves_no_empty_ones() {
        let mut index = ObjectIndex::default();
        let a = object(ck::CKO_DATA, b"1", "a");
        index.insert(Ouid([1; 16]), &a);
        assert_eq!(index.values(), 3);
        index.remove(&Ouid([1; 16]), &a);
        assert_eq!(index.values(), 0);
        assert_eq!(set(index.candidates(&a)), Some(Vec::new()));
    }
}

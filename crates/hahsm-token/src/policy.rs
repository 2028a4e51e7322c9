//! HSM-wide and partition policies, with the report's numbers and readable names.
use serde::{Deserialize, Serialize};

/// A policy: its Luna number, its name, what it means, and whether it is a flag
/// (0/1) or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDef {
    pub number: u32,
    pub name: &'static str,
    pub description: &'static str,
    pub is_flag: bool,
    pub default: u64,
}

pub const HSM_POLICIES: &[PolicyDef] = &[
    PolicyDef {
        number: 7,
        name: "allow-cloning",
        description: "Allow cloning",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 16,
        name: "allow-network-replication",
        description: "Allow network replication",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 20,
        name: "allow-remote-authentication",
        description: "Allow remote authentication",
        is_flag: true,
        default: 0,
    },
];

pub const PARTITION_POLICIES: &[PolicyDef] = &[
    PolicyDef {
        number: 0,
        name: "allow-private-key-cloning",
        description: "Allow private key cloning",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 4,
        name: "allow-secret-key-cloning",
        description: "Allow secret key cloning",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 15,
        name: "max-failed-logins",
        description: "Maximum failed user logins before lockout",
        is_flag: false,
        default: 10,
    },
    PolicyDef {
        number: 21,
        name: "allow-ha-recovery",
        description: "Allow high availability recovery",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 22,
        name: "allow-activation",
        description: "Allow activation",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 23,
        name: "allow-auto-activation",
        description: "Allow auto-activation",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 30,
        name: "enforce-key-separation",
        description: "Refuse keys that can both wrap and decrypt",
        is_flag: true,
        default: 0,
    },
    PolicyDef {
        number: 40,
        name: "allow-legacy-mechanisms",
        description: "Offer the legacy mechanisms older systems need: 3DES, SHA-1 HMAC, MD5 and RSA-1024",
        is_flag: true,
        default: 0,
    },
];

/// Finds a policy by number or by name.
pub fn lookup<'a>(table: &'a [PolicyDef], key: &str) -> Option<&'a PolicyDef> {
    let key = key.trim();
    match key.parse::<u32>() {
        Ok(n) => table.iter().find(|p| p.number == n),
        Err(_) => table.iter().find(|p| p.name.eq_ignore_ascii_case(key)),
    }
}

/// A set of policy values, keyed by policy number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policies(pub std::collections::BTreeMap<u32, u64>);

impl Policies {
    pub fn defaults(table: &[PolicyDef]) -> Policies {
        Policies(table.iter().map(|p| (p.number, p.default)).collect())
    }

    pub fn get(&self, number: u32) -> u64 {
        self.0.get(&number).copied().unwrap_or(0)
    }

    pub fn enabled(&self, number: u32) -> bool {
        self.get(number) != 0
    }

    /// Sets a policy after checking the value suits it.
    pub fn set(&mut self, def: &PolicyDef, value: u64) -> Result<(), String> {
        if def.is_flag && value > 1 {
            return Err(format!("policy {} ({}) takes 0 or 1", def.number, def.name));
        }
        self.0.insert(def.number, value);
        Ok(())
    }
}

pub mod hsm {
    pub const ALLOW_CLONING: u32 = 7;
    pub const ALLOW_NETWORK_REPLICATION: u32 = 16;
    pub const ALLOW_REMOTE_AUTH: u32 = 20;
}

pub mod partition {
    pub const ALLOW_PRIVATE_KEY_CLONING: u32 = 0;
    pub const ALLOW_SECRET_KEY_CLONING: u32 = 4;
    pub const MAX_FAILED_LOGINS: u32 = 15;
    pub const ALLOW_HA_RECOVERY: u32 = 21;
    pub const ALLOW_ACTIVATION: u32 = 22;
    pub const ALLOW_AUTO_ACTIVATION: u32 = 23;
    pub const ENFORCE_KEY_SEPARATION: u32 = 30;
    pub const ALLOW_LEGACY_MECHANISMS: u32 = 40;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_number_and_name() {
        assert_eq!(
            lookup(PARTITION_POLICIES, "23").unwrap().name,
            "allow-auto-activation"
        );
        assert_eq!(lookup(HSM_POLICIES, "Allow-Cloning").unwrap().number, 7);
        assert!(lookup(HSM_POLICIES, "99").is_none());
    }

    #[test]
    fn flags_refuse_values_above_one() {
        let mut p = Policies::defaults(PARTITION_POLICIES);
        let def = lookup(PARTITION_POLICIES, "22").unwrap();
        assert!(p.set(def, 2).is_err());
        p.set(def, 1).unwrap();
        assert!(p.enabled(22));
    }
}

//! PKCS#11 attribute rules.

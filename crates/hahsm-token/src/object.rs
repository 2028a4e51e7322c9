//! Object classes and key types.

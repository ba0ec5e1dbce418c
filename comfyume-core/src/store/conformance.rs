//! SKELETON: the store conformance suite.

//! SKELETON: the dispatcher engine.

//! The RunStore contract suite.

//! The SSH port contract suite.

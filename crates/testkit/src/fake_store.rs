//! An in-memory RunStore with the same atomic claim and compare-and-set as the real one.

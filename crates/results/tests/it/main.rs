//! The results crate from the outside: reports read from real folders (good ones and every
//! kind of bad one, each against its limit), the matrix of several runs, the merged JUnit and
//! the HTML page.

mod bad_reports;
mod good_reports;
mod matrix;
mod support;

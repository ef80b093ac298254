//! A scriptable fake of the SSH ports that records every call.

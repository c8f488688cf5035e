//! Diego-style actions on top of the Garden API.

//! Async client for the Garden API.

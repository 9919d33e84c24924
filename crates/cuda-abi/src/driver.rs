//! Driver API types and codes (hand-written; layouts checked against cuda.h by tests).

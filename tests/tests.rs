//! Integration tests, one binary with a module per concern (as ripgrep does), so the
//! harness and the dependencies are linked once. Every test runs the real proxy or the
//! real binary against real databases, a real upstream and real TLS on loopback.
#![allow(dead_code)]

#[macro_use]
mod common;

mod apikeys;
mod attacks;
mod authorization;
mod cli;
mod faults;
mod flexmeasures;
mod flexmeasures_ui;
mod fuzz_corpus;
mod h2_attacks;
mod hardening;
mod ingress;
mod observability;
mod operations;
mod proxy;
mod regression;
mod replicas;
mod rule_tests;
mod serve;
mod tokens;
mod upstream_wire;

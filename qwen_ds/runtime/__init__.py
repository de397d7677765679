"""The built-in runtime: train / infer entry points that run on every rank under DeepSpeed.

Imports torch, deepspeed and transformers: never imported by the planning commands."""

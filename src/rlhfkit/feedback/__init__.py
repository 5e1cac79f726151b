"""The labeling service: a store of tasks and judgements, a web app for labelers, simulated labelers."""

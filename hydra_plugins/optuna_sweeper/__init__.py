"""The project's Optuna sweeper for Hydra multirun: `hydra/sweeper=optuna`.

Hydra imports every module of the `hydra_plugins` namespace package when it starts (even for a
plain compose), so the modules it scans (those not starting with `_`) import only Hydra and the
standard library at the top; Optuna and MLflow are imported where they are used.
"""

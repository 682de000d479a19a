"""Thin adapter: fetch a hub model or convert the packaged GGUF model (pspo.models)."""
from pspo.models import prepare_model
from pspo.workflow import run_job

m = snakemake.params.model
run_job(
    snakemake,
    lambda: prepare_model(
        m["source"], snakemake.output[0], path=m["path"], revision=m["revision"],
        package=m["package"], gguf_file=m["gguf_file"],
    ),
)

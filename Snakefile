# Reproduction of "It's Not You, It's Clipping" (PSPO / GR-PSPO): data -> models -> base evaluation -> GRPO
# training (clip, noclip, noclip at mu=2, sigmoid, PSPO per alpha; every seed) -> T=0 and sampled evaluation on
# four benchmarks -> every table and figure.
#
#   snakemake --cores all                                  # the paper grid (config/config.yaml; GPUs)
#   snakemake --cores all --configfile config/cpu.yaml     # the CPU grid on the packaged SmolLM2-135M
#   snakemake --profile slurm                              # the same DAG on a SLURM cluster
from snakemake.utils import min_version

min_version("9.0")


# The paper grid is the default; a --configfile on the command line replaces it (is not merged into it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),

"""The "cluster bundle" panel of the Train tab: the current RunConfig as a folder that starts the
training on several machines (launch.sh per node, SLURM script). The files come from
backend.training.distributed, the same code the estimator's N x G figures assume."""
from __future__ import annotations

import html

import gradio as gr

from backend.core import access
from backend.core.config import ConfigError, validate_config
from backend.training.distributed import write_bundle
from backend.core.errors import UserError
from backend.core.security import safe_filename, safe_join
from studio.context import StudioContext


def bundle_for(ctx: StudioContext, rc: dict, nodes: float, gpus: float, name: str) -> str:
    """Markdown saying what was written and how to start it, or the sentence why not."""
    try:
        access.policy(ctx.workspace).run_config(rc)
        cfg = validate_config(rc)
        folder = safe_join(ctx.workspace / "bundles", safe_filename(name or cfg.name or "bundle", default="bundle"))
        out = write_bundle(cfg, int(nodes or 0), int(gpus or 0), folder)
    except (ConfigError, UserError) as e:
        return f"<span class='ft-error'>{html.escape(str(e))}</span>"
    files = ", ".join(f"`{f}`" for f in out["files"])
    return (f"Wrote {files} to `{out['out']}` ({out['world_size']} processes in all).\n\n"
            f"On every node, rank 0 on the main node: `{out['out']}/launch.sh NODE_RANK MAIN_ADDR`  \n"
            f"With SLURM: `sbatch {out['out']}/slurm.sbatch`")


def build(ctx: StudioContext) -> None:
    with gr.Accordion("Cluster bundle (train on several machines)", open=False, elem_id="cluster-bundle"):
        gr.Markdown("<span class='ft-help'>Writes the configuration above, the accelerate/DeepSpeed configs, a "
                    "`launch.sh` per node and a SLURM script into the workspace's bundles folder. The Method tab's "
                    "estimate uses the same GPUs and strategy (set them there).</span>")
        with gr.Row():
            nodes = gr.Number(2, precision=0, minimum=1, label="Nodes", info="machines", elem_id="bundle-nodes")
            gpus = gr.Number(8, precision=0, minimum=1, label="GPUs per node", elem_id="bundle-gpus")
            name = gr.Textbox("", label="Bundle name", info="a folder under workspace/bundles",
                              elem_id="bundle-name")
        write = gr.Button("Write bundle", elem_id="bundle-write")
        result = gr.Markdown(elem_id="bundle-result")
    write.click(lambda rc, n, g, nm: bundle_for(ctx, rc, n, g, nm), [ctx.run_config, nodes, gpus, name], result)

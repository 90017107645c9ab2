"""`aiaa` command line.

Exit codes (stable, for scripts):
  0 ok · 2 usage error · 3 not found (model, session, file) · 4 session expired (HTTP 440)
  5 bad request (other 4xx, or an invalid local input) · 6 server error (5xx, unreadable answer)
  7 connection error (refused, broken, timed out)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiaa_client.client import DEFAULT_SERVER, AIAAClient, check_output_path
from aiaa_client.errors import (
    AIAAConnectionError,
    AIAAError,
    BadRequestError,
    NotFoundError,
    SessionExpiredError,
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_SESSION_EXPIRED = 4
EXIT_BAD_REQUEST = 5
EXIT_SERVER_ERROR = 6
EXIT_CONNECTION = 7

PROGRESS_MIN_BYTES = 1 << 20  # smaller bodies go by without a progress line


class ProgressPrinter:
    """Prints `upload 12.0/40.0 MiB (30%)` on stderr for bodies of 1 MiB or more, at most 5 times a second."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.last = 0.0
        self.active = False

    def __call__(self, direction: str, done: int, total: int | None) -> None:
        if (total or done) < PROGRESS_MIN_BYTES:
            return
        finished = total is not None and done >= total
        now = time.monotonic()
        if not finished and now - self.last < 0.2:
            return
        self.last = now
        mib = done / 2**20
        text = f"{direction} {mib:.1f}/{total / 2**20:.1f} MiB ({100 * done // total}%)" if total else \
            f"{direction} {mib:.1f} MiB"
        self.stream.write(f"\r{text}   ")
        self.active = True
        if finished:
            self.stream.write("\n")
            self.active = False
        self.stream.flush()


def parse_point(text: str) -> list[int]:
    try:
        values = [round(float(v)) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is x,y,z (voxel indices), got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"a point is x,y,z (voxel indices), got {text!r}")
    return values


def parse_sizes(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("params must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiaa",
        description="Client for AI-Assisted Annotation (Clara AIAA protocol) servers.",
        epilog="exit codes: 0 ok, 2 usage, 3 not found, 4 session expired, 5 bad request, 6 server error, "
               "7 connection error",
    )
    parser.add_argument("--server", default=os.environ.get("AIAA_SERVER", DEFAULT_SERVER),
                        help="server URL (env AIAA_SERVER; default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("AIAA_TOKEN"),
                        help="admin bearer token (env AIAA_TOKEN)")
    parser.add_argument("--timeout", type=float, default=300.0, help="socket timeout in seconds")
    parser.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("models", help="list models (JSON)")
    p.add_argument("--label")
    p.add_argument("--type")
    p.add_argument("--model", help="show only this model")
    p.set_defaults(func=cmd_models)

    def image_command(name: str, help_text: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--model", "-m", required=True)
        sub.add_argument("image", nargs="?", help="input image (.nii.gz, .nii, .nrrd…); omit with --session")
        sub.add_argument("-o", "--output", help="where to write the result image (default: next to the input, "
                                                   f"<name>_{name}.nii.gz); its folder must exist")
        sub.add_argument("--session", help="use the image stored in this session")
        sub.set_defaults(func=func)
        return sub

    p = image_command("segment", "automatic segmentation", cmd_segment)
    image_command("infer", "generic /v1/inference", cmd_infer).add_argument(
        "--params", type=parse_json_object, default={}, help="JSON object passed to the model")

    p = image_command("deepgrow", "DeepGrow from clicks", cmd_deepgrow)
    p.add_argument("--fg", type=parse_point, action="append", default=[], metavar="X,Y,Z")
    p.add_argument("--bg", type=parse_point, action="append", default=[], metavar="X,Y,Z")
    p.add_argument("--current", type=parse_point, metavar="X,Y,Z", help="newest click (default: last --fg)")
    p.add_argument("--spatial-size", type=parse_sizes, metavar="D,H,W")

    p = image_command("dextr3d", "DExtr3D from >= 6 boundary points", cmd_dextr3d)
    p.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y,Z", required=True)
    p.add_argument("--server-crop", action="store_true", help="send the full image; the server crops")
    p.add_argument("--pad", type=float, default=20.0, help="crop padding in mm (default %(default)s)")
    p.add_argument("--roi", type=parse_sizes, default=[128, 128, 128], metavar="X,Y,Z")

    p = commands.add_parser("mask2polygon", help="polygons of a 3D binary mask (JSON)")
    p.add_argument("mask")
    p.add_argument("--more-points", type=int, default=10)
    p.set_defaults(func=cmd_mask2polygon)

    p = commands.add_parser("session", help="create / get / close a session")
    session = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = session.add_parser("create", help="upload an image; prints the session JSON (session_id)")
    s.add_argument("image")
    s.add_argument("--expiry", type=int, default=0, help="seconds; 0 = server default")
    s.set_defaults(func=cmd_session_create)
    for action, func, text in (("get", cmd_session_get, "print a session's JSON (expiry, image info)"),
                               ("close", cmd_session_close, "delete the session and its image on the server")):
        s = session.add_parser(action, help=text)
        s.add_argument("session_id")
        s.set_defaults(func=func)

    p = commands.add_parser("upload", help="load a model (admin): MMAR folder, .zip/.tar.gz, or config .json")
    p.add_argument("name")
    p.add_argument("path", nargs="?", help="MMAR folder, archive, or config_aiaa.json")
    p.add_argument("--config", help="config_aiaa.json (with --model-file)")
    p.add_argument("--model-file", help="model file, e.g. models/model.ts (with --config)")
    p.set_defaults(func=cmd_upload)

    p = commands.add_parser("config", help="show a model's stored config (admin)")
    p.add_argument("name")
    p.set_defaults(func=cmd_config)

    p = commands.add_parser("delete", help="unload and delete a model (admin)")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)

    p = commands.add_parser("logs", help="last lines of the server log")
    p.add_argument("--lines", "-n", type=int, default=100)
    p.set_defaults(func=cmd_logs)
    return parser


def print_json(value: Any) -> None:
    """One compact JSON document per line (points stay `[x,y,z]`, easy to pipe into `jq`)."""
    print(json.dumps(value, separators=(",", ":")))


def check_image(args: argparse.Namespace, parser_error: Callable[[str], None]) -> None:
    if args.image is None and args.session is None:
        parser_error(f"{args.command}: give an input image or --session")
    if args.output is None and args.image is None:
        parser_error(f"{args.command}: with --session, give -o PATH for the result image")


def default_output(image: str, command: str) -> str:
    """`scans/ct.nii.gz` -> `scans/ct_segment.nii.gz`: results land next to the input unless -o says otherwise."""
    path = Path(image)
    stem = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return str(path.with_name(f"{stem}_{command}.nii.gz"))


def report_result(args: argparse.Namespace, result: Any) -> int:
    summary: dict[str, Any] = {"params": result.params}
    if result.path is not None:
        summary["output"] = str(result.path)
    print_json(summary)
    return EXIT_OK


def cmd_models(client: AIAAClient, args: argparse.Namespace) -> int:
    if args.model:
        print_json(client.model(args.model).raw)
    else:
        print_json([m.raw for m in client.models(label=args.label, type=args.type)])
    return EXIT_OK


def cmd_segment(client: AIAAClient, args: argparse.Namespace) -> int:
    return report_result(args, client.segmentation(args.model, args.image, session_id=args.session,
                                                   output=args.output))


def cmd_infer(client: AIAAClient, args: argparse.Namespace) -> int:
    return report_result(args, client.inference(args.model, args.image, params=args.params,
                                                session_id=args.session, output=args.output))


def cmd_deepgrow(client: AIAAClient, args: argparse.Namespace) -> int:
    current = args.current or (args.fg[-1] if args.fg else None)
    result = client.deepgrow(args.model, args.image, foreground=args.fg, background=args.bg,
                             current_point=current, spatial_size=args.spatial_size, session_id=args.session,
                             output=args.output)
    return report_result(args, result)


def cmd_dextr3d(client: AIAAClient, args: argparse.Namespace) -> int:
    result = client.dextr3d(args.model, args.image, points=args.point, session_id=args.session,
                            output=args.output, server_crop=args.server_crop, pad=args.pad, roi=args.roi)
    return report_result(args, result)


def cmd_mask2polygon(client: AIAAClient, args: argparse.Namespace) -> int:
    print_json(client.mask2polygon(args.mask, more_points=args.more_points))
    return EXIT_OK


def cmd_session_create(client: AIAAClient, args: argparse.Namespace) -> int:
    session = client.create_session(args.image, expiry=args.expiry)
    print_json({**session.info, "session_id": session.session_id})
    return EXIT_OK


def cmd_session_get(client: AIAAClient, args: argparse.Namespace) -> int:
    print_json(client.get_session(args.session_id))
    return EXIT_OK


def cmd_session_close(client: AIAAClient, args: argparse.Namespace) -> int:
    print_json(client.close_session(args.session_id))
    return EXIT_OK


def cmd_upload(client: AIAAClient, args: argparse.Namespace) -> int:
    print_json(client.upload_model(args.name, args.path, config=args.config, model_file=args.model_file))
    return EXIT_OK


def cmd_config(client: AIAAClient, args: argparse.Namespace) -> int:
    print_json(client.get_model_config(args.name))
    return EXIT_OK


def cmd_delete(client: AIAAClient, args: argparse.Namespace) -> int:
    print_json(client.delete_model(args.name))
    return EXIT_OK


def cmd_logs(client: AIAAClient, args: argparse.Namespace) -> int:
    sys.stdout.write(client.logs(args.lines))
    return EXIT_OK


def available_models_hint(client: AIAAClient | None, args: argparse.Namespace, error: BaseException) -> str:
    """For a 404 on a named model, the models the server does have (best effort: empty if listing fails too)."""
    name = getattr(args, "model", None) or (getattr(args, "name", None) if args.command in ("config", "delete")
                                            else None)
    if client is None or not name or not isinstance(error, NotFoundError) or "session" in str(error).lower():
        return ""
    try:
        names = sorted(m.name for m in client.models())
    except AIAAError:
        return ""
    return f" (models on the server: {', '.join(names) or 'none'})"


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, SessionExpiredError):
        return EXIT_SESSION_EXPIRED
    if isinstance(error, (NotFoundError, FileNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(error, (BadRequestError, ValueError)):
        return EXIT_BAD_REQUEST
    if isinstance(error, AIAAConnectionError):
        return EXIT_CONNECTION
    return EXIT_SERVER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    if getattr(args, "func", None) in (cmd_segment, cmd_infer, cmd_deepgrow, cmd_dextr3d):
        check_image(args, parser.error)
        args.output = args.output or default_output(args.image, args.command)
    if args.command == "dextr3d" and len(args.point) < 6:
        parser.error(f"dextr3d: give at least 6 --point values, got {len(args.point)}")
    if args.command == "upload" and args.path is None and args.config is None:
        parser.error("upload: give PATH, or --config [--model-file]")
    progress = None if args.quiet else ProgressPrinter()
    client = None
    try:
        client = AIAAClient(args.server, timeout=args.timeout, admin_token=args.token,
                            verify_tls=not args.insecure, progress=progress)
        if getattr(args, "output", None):
            check_output_path(Path(args.output))
        return int(args.func(client, args))
    except (AIAAError, FileNotFoundError, ValueError) as error:
        if progress is not None and progress.active:
            sys.stderr.write("\n")
        sys.stderr.write(f"aiaa: error: {error}{available_models_hint(client, args, error)}\n")
        return exit_code_for(error)
    except KeyboardInterrupt:
        sys.stderr.write("aiaa: interrupted\n")
        return 130
    except BrokenPipeError:
        # stdout closed early (`aiaa models | head`): not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

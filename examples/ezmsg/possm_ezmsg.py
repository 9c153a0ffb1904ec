"""POSSM in an ezmsg graph.

Simulated binned counts -> POSSM -> printed predictions (runs anywhere, stops by itself)::

    python examples/ezmsg/possm_ezmsg.py --checkpoint model.yaml --simulate --messages 40

A live LSL stream (e.g. from `possm simulate --lsl --form binned`) -> POSSM -> an LSL outlet, with
ezmsg-lsl's units on both sides (stop with Ctrl-C)::

    python examples/ezmsg/possm_ezmsg.py --checkpoint model.yaml --inlet spikes --outlet possm
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import ezmsg.core as ez
import numpy as np
from ezmsg.util.messages.axisarray import AxisArray
from ezmsg.util.terminate import TerminateOnTotal, TerminateOnTotalSettings

from possm_plugin.integrations.ezmsg import PossmDecoderSettings, PossmDecoderUnit


class SimulatedCountsSettings(ez.Settings):
    n_channels: int = 16
    n_messages: int = 40
    bins_per_message: int = 10
    bin_width: float = 0.01
    seed: int = 0


class SimulatedCounts(ez.Unit):
    """Poisson counts, one message of ``bins_per_message`` bins per ``bins_per_message * bin_width``
    seconds (real time), each bin stamped with its end, as POSSM's LSL streams are."""

    SETTINGS = SimulatedCountsSettings
    OUTPUT_SIGNAL = ez.OutputStream(AxisArray)

    @ez.publisher(OUTPUT_SIGNAL)
    async def spin(self):
        s = self.SETTINGS
        rng = np.random.default_rng(s.seed)
        period = s.bins_per_message * s.bin_width
        for k in range(s.n_messages):
            counts = rng.poisson(0.3, (s.bins_per_message, s.n_channels)).astype(np.int16)
            axis = AxisArray.TimeAxis(fs=1.0 / s.bin_width, offset=(k * s.bins_per_message + 1) * s.bin_width)
            yield self.OUTPUT_SIGNAL, AxisArray(counts, dims=["time", "ch"], axes={"time": axis}, key="spikes", stream_dim="time")
            await asyncio.sleep(period)


class PrintPredictions(ez.Unit):
    INPUT_SIGNAL = ez.InputStream(AxisArray)
    OUTPUT_SIGNAL = ez.OutputStream(AxisArray)

    @ez.subscriber(INPUT_SIGNAL)
    @ez.publisher(OUTPUT_SIGNAL)
    async def on_message(self, msg: AxisArray):
        t = msg.axes["time"]
        names = [str(x) for x in msg.axes["ch"].data]
        for i, row in enumerate(msg.data):
            vals = "  ".join(f"{n}={v:+8.3f}" for n, v in zip(names, row))
            print(f"t={t.offset + i * t.gain:10.3f} s  {vals}", flush=True)
        yield self.OUTPUT_SIGNAL, msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="POSSM checkpoint (default: the bundled one)")
    ap.add_argument("--session", default=None, help="session to decode as (default: the checkpoint's)")
    ap.add_argument("--simulate", action="store_true", help="decode simulated counts instead of an LSL stream")
    ap.add_argument("--messages", type=int, default=40, help="--simulate: messages of 100 ms to send")
    ap.add_argument("--channels", type=int, default=16, help="--simulate: channels (the checkpoint session's unit count)")
    ap.add_argument("--inlet", default="spikes", help="name of the LSL spike stream to decode")
    ap.add_argument("--outlet", default="possm", help="name of the LSL stream of predictions")
    ap.add_argument("--graph-port", type=int, default=None, help="port of a graph server of its own on 127.0.0.1 (default: ezmsg's)")
    args = ap.parse_args(argv)

    possm = PossmDecoderUnit(PossmDecoderSettings(checkpoint=args.checkpoint, session=args.session))
    show = PrintPredictions()
    if args.simulate:
        src = SimulatedCounts(SimulatedCountsSettings(n_channels=args.channels, n_messages=args.messages))
        # one prediction message per source message (each 100 ms message completes two 50 ms chunks)
        stop = TerminateOnTotal(TerminateOnTotalSettings(total=args.messages))
        comps = {"SOURCE": src, "POSSM": possm, "PRINT": show, "STOP": stop}
        conns = ((src.OUTPUT_SIGNAL, possm.INPUT_SIGNAL), (possm.OUTPUT_SIGNAL, show.INPUT_SIGNAL),
                 (show.OUTPUT_SIGNAL, stop.INPUT_MESSAGE))
    else:
        import pylsl
        from ezmsg.lsl.units import LSLInfo, LSLInletSettings, LSLInletUnit, LSLOutletSettings, LSLOutletUnit

        inlet = LSLInletUnit(LSLInletSettings(info=LSLInfo(name=args.inlet), use_lsl_clock=True, processing_flags=pylsl.proc_clocksync))
        outlet = LSLOutletUnit(LSLOutletSettings(stream_name=args.outlet, stream_type="Control", assume_lsl_clock=True))
        comps = {"INLET": inlet, "POSSM": possm, "PRINT": show, "OUTLET": outlet}
        conns = ((inlet.OUTPUT_SIGNAL, possm.INPUT_SIGNAL), (possm.OUTPUT_SIGNAL, show.INPUT_SIGNAL),
                 (possm.OUTPUT_SIGNAL, outlet.INPUT_SIGNAL))
    where = {} if args.graph_port is None else {"graph_address": ("127.0.0.1", args.graph_port), "auto_start": True}
    ez.run(components=comps, connections=conns, force_single_process=True, **where)
    return 0


if __name__ == "__main__":
    sys.exit(main())

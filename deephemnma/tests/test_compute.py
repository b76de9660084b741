"""How heavy protocols launch the command line: CPU, one GPU, torchrun over several, a clear refusal without GPUs."""
import unittest
from unittest import mock

from deephemnma.protocols.compute import gpu_command


class FakeProtocol:
    """The three things gpu_command reads from a protocol: "Use GPU", its GPU list and its logs folder."""

    def __init__(self, use_gpu: bool, gpus: str):
        self.useGpu = mock.Mock(get=mock.Mock(return_value=use_gpu))
        self._gpus = gpus

    def getGpuList(self):
        return self._gpus

    def _getLogsPath(self, name: str) -> str:
        return f'/project/Runs/000042_DeepHemnmaProtTrain/logs/{name}'


def command(use_gpu: bool, gpus: str, cuda: bool):
    with mock.patch('torch.cuda.is_available', return_value=cuda):
        return gpu_command(FakeProtocol(use_gpu, gpus), 'train', '-i in.star -o out')


class TestGpuCommand(unittest.TestCase):
    def test_cpu_when_gpu_off(self):
        program, arguments, env = command(False, '0 1', cuda=False)
        self.assertEqual((program, arguments), ('deephemnma', 'train -i in.star -o out --device cpu'))

    def test_one_gpu_runs_the_command_on_it(self):
        program, arguments, env = command(True, '3', cuda=True)
        self.assertEqual((program, arguments), ('deephemnma', 'train -i in.star -o out --device cuda'))
        self.assertEqual(env['CUDA_VISIBLE_DEVICES'], '3')

    def test_several_gpus_run_torchrun_with_logs_in_the_protocol(self):
        program, arguments, env = command(True, '0, 2,5', cuda=True)
        self.assertTrue(program.endswith('torchrun'), program)
        self.assertEqual(arguments, '--nproc_per_node=3 --log-dir /project/Runs/000042_DeepHemnmaProtTrain/logs/'
                                    'torchrun -m deephemnma.cli.main train -i in.star -o out --device cuda')
        self.assertEqual(env['CUDA_VISIBLE_DEVICES'], '0,2,5')

    def test_gpu_requested_without_cuda_is_refused_clearly(self):
        with self.assertRaisesRegex(RuntimeError, r'GPU\(s\) 0 1 requested, but torch sees no CUDA device.*'
                                                  r'set "Use GPU" to No'):
            command(True, '0 1', cuda=False)

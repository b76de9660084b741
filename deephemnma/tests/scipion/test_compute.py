"""How heavy protocols launch the command line: CPU, one GPU, torchrun over several, a clear refusal without GPUs."""
import unittest
from unittest import mock

from deephemnma.protocols.base import command_line


class FakeProtocol:
    """The three things command_line reads from a protocol: "Use GPU", its GPU list and its logs folder."""

    def __init__(self, use_gpu: bool, gpus: str):
        self.useGpu = mock.Mock(get=mock.Mock(return_value=use_gpu))
        self._gpus = gpus

    def getGpuList(self):
        return self._gpus

    def _getLogsPath(self, name: str) -> str:
        return f'/project/Runs/000042_DeepHemnmaProtTrain/logs/{name}'


def launch(use_gpu: bool, gpus: str, cuda: bool, command: str = 'train'):
    with mock.patch('torch.cuda.is_available', return_value=cuda):
        return command_line(FakeProtocol(use_gpu, gpus), command, '-i in.star -o out')


class TestGpuCommand(unittest.TestCase):
    def test_cpu_when_gpu_off(self):
        program, arguments, env = launch(False, '0 1', cuda=False)
        self.assertEqual((program, arguments), ('deephemnma', 'train -i in.star -o out --device cpu'))

    def test_one_gpu_runs_the_command_on_it(self):
        program, arguments, env = launch(True, '3', cuda=True)
        self.assertEqual((program, arguments), ('deephemnma', 'train -i in.star -o out --device cuda'))
        self.assertEqual(env['CUDA_VISIBLE_DEVICES'], '3')

    def test_several_gpus_run_torchrun_with_logs_in_the_protocol(self):
        program, arguments, env = launch(True, '0, 2,5', cuda=True)
        self.assertTrue(program.endswith('torchrun'), program)
        self.assertEqual(arguments, '--nproc_per_node=3 --log-dir /project/Runs/000042_DeepHemnmaProtTrain/logs/'
                                    'torchrun -m deephemnma.cli.main train -i in.star -o out --device cuda')
        self.assertEqual(env['CUDA_VISIBLE_DEVICES'], '0,2,5')

    def test_several_gpus_on_a_single_process_command_use_the_first(self):
        program, arguments, env = launch(True, '2 3', cuda=True, command='simulate')
        self.assertEqual((program, arguments), ('deephemnma', 'simulate -i in.star -o out --device cuda'))
        self.assertEqual(env['CUDA_VISIBLE_DEVICES'], '2,3')

    def test_gpu_requested_without_cuda_is_refused_clearly(self):
        with self.assertRaisesRegex(RuntimeError, r'GPU\(s\) 0 1 requested, but torch sees no CUDA device.*'
                                                  r'set "Use GPU" to No'):
            launch(True, '0 1', cuda=False)

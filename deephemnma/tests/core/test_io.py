"""Image stacks and particle metadata: round trips for every format and clear errors for bad input."""
import os

import numpy as np
import pytest

from deephemnma.data.formats import read_particles, write_particles
from deephemnma.data.images import StackWriter, read_image, read_stack, stack_info, write_map, write_stack
from deephemnma.data.particles import Particles, stack_locations
from deephemnma.data.stacks import ImageSource
from deephemnma.runtime.errors import InputError


def _particles(n=7, modes=3, stack='stack.mrcs'):
    rng = np.random.default_rng(0)
    return Particles(image=stack_locations(stack, n), pixel_size=1.3, angles=rng.uniform(-180, 180, (n, 3)),
                     shifts=rng.uniform(-5, 5, (n, 2)), amplitudes=rng.uniform(-200, 200, (n, modes)),
                     defocus_u=rng.uniform(5000, 20000, n), defocus_v=rng.uniform(5000, 20000, n),
                     defocus_angle=rng.uniform(0, 180, n), voltage=200.0, cs=2.0, amplitude_contrast=0.07,
                     score=rng.uniform(0, 1, n), extra={'true_r': rng.uniform(0, 1, n)})


def _assert_same(a: Particles, b: Particles):
    assert list(a.image) == list(b.image)
    for name in ('angles', 'shifts', 'amplitudes', 'defocus_u', 'defocus_v', 'defocus_angle', 'score'):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=2e-6, err_msg=name)
    assert (a.voltage, a.cs, a.amplitude_contrast) == pytest.approx((b.voltage, b.cs, b.amplitude_contrast))
    assert a.pixel_size == pytest.approx(b.pixel_size)
    np.testing.assert_allclose(a.extra['true_r'], b.extra['true_r'], atol=2e-6)


@pytest.mark.parametrize('suffix', ['.star', '.xmd', '.csv'])
def test_metadata_round_trip(tmp_path, suffix):
    particles = _particles()
    path = write_particles(tmp_path / f'particles{suffix}', particles)
    _assert_same(particles, read_particles(path))
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')], 'temporary file left behind'


def test_xmd_readable_by_xmipp_with_continuousflex_columns(tmp_path):
    import xmippLib
    particles = _particles()
    path = write_particles(tmp_path / 'images.xmd', particles)
    md = xmippLib.MetaData(str(path))
    labels = [xmippLib.label2Str(label) for label in md.getActiveLabels()]
    for column in ('image', 'enabled', 'angleRot', 'angleTilt', 'anglePsi', 'shiftX', 'shiftY',
                   'nmaDisplacements', 'cost'):
        assert column in labels
    first = md.firstObject()
    assert md.getValue(xmippLib.MDL_ANGLE_TILT, first) == pytest.approx(particles.angles[0, 1], abs=1e-5)
    assert np.allclose(md.getValue(xmippLib.MDL_NMA, first), particles.amplitudes[0], atol=1e-5)


def test_xmd_with_exactly_continuousflex_columns(tmp_path):
    path = write_particles(tmp_path / 'images.xmd', _particles(), continuousflex_only=True)
    columns = [line.strip()[1:] for line in path.read_text().splitlines() if line.startswith(' _')]
    assert columns == ['image', 'enabled', 'angleRot', 'angleTilt', 'anglePsi', 'shiftX', 'shiftY',
                       'nmaDisplacements', 'cost']
    back = read_particles(path, pixel_size=1.3)
    np.testing.assert_allclose(back.amplitudes, _particles().amplitudes, atol=2e-6)


def test_reads_continuousflex_images_xmd(tmp_path):
    text = ("# XMIPP_STAR_1 * \n # \ndata_noname\nloop_\n _image\n _enabled\n _angleRot\n _angleTilt\n"
            " _anglePsi\n _shiftX\n _shiftY\n _nmaDisplacements\n _cost\n _itemId\n"
            "000001@imgs.stk                    1    12.5   100.25  -30.0   1.5  -2.25 "
            "'    150.5    -20.25     3.0'   0.55  1\n"
            "000002@imgs.stk                   -1     0.0    0.0     0.0    0.0   0.0 '0 0 0'   0.1  2\n")
    path = tmp_path / 'images.xmd'
    path.write_text(text)
    particles = read_particles(path, pixel_size=2.2)
    assert len(particles) == 1, 'disabled images are dropped'
    np.testing.assert_allclose(particles.angles[0], [12.5, 100.25, -30.0])
    np.testing.assert_allclose(particles.shifts[0], [1.5, -2.25])
    np.testing.assert_allclose(particles.amplitudes[0], [150.5, -20.25, 3.0])
    assert particles.score[0] == pytest.approx(0.55) and particles.pixel_size == 2.2


def test_star_shifts_are_stored_in_angstrom_with_xmipp_sign(tmp_path):
    particles = _particles()
    path = write_particles(tmp_path / 'p.star', particles)
    text = path.read_text()
    assert 'rlnOriginXAngst' in text and 'data_optics' in text and 'rlnImagePixelSize' in text
    value = float(text.split('data_particles')[1].strip().splitlines()[-len(particles)].split()[5])
    assert value == pytest.approx(particles.shifts[0, 0] * 1.3, abs=1e-5)


@pytest.mark.parametrize('suffix,content,message', [
    ('.star', 'data_particles\nloop_\n_rlnAngleRot #1\n10\n', 'rlnImageName'),
    ('.star', 'data_particles\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n_rlnAngleRot #3\n1@a.mrcs 1 10\n',
     'rlnAngleTilt'),
    ('.star', 'data_particles\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n1@a.mrcs\n', '1 values for 2'),
    ('.xmd', 'data_noname\nloop_\n _image\n _shiftX\n1@a.mrcs 0.5\n', 'shiftY'),
    ('.xmd', 'data_noname\nloop_\n _image\n _cost\n1@a.mrcs abc\n', 'non-numeric'),
    ('.csv', 'image,rot\n1@a.mrcs,3\n', 'pixel_size'),
    ('.txt', 'x', 'unknown metadata format'),
    ('.star', 'just text\n', 'data before any data_ block'),
])
def test_bad_metadata_gives_clear_error(tmp_path, suffix, content, message):
    path = tmp_path / f'bad{suffix}'
    path.write_text(content)
    with pytest.raises(InputError) as error:
        read_particles(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_star_rows_with_and_without_quotes(tmp_path):
    from deephemnma.data.star import read_star_tables, write_star_tables
    table = {'name': ['1@a b.mrcs', '2@plain.mrcs', "3@it's.mrcs", '', "it's here", "'x", "a' b"],
             'value': ['1.5', '-2', '3e-4', 'x', 'a b\'', '"q" r', 'y']}
    write_star_tables(tmp_path / 'q.star', {'particles': table})
    assert read_star_tables(tmp_path / 'q.star')['particles'] == table
    # CIF/STAR quoting: a quote closes a value only before white space; no escapes
    (tmp_path / 'e.star').write_text('data_x\nloop_\n_a #1\n_b #2\n"two words"  x\\y\n'
                                     "'it's here'\t'1 2 3'\n  7\t8  \n")
    assert read_star_tables(tmp_path / 'e.star')['x'] == {'a': ['two words', "it's here", '7'],
                                                          'b': ['x\\y', '1 2 3', '8']}
    with pytest.raises(InputError, match='both quote marks precede white space'):
        write_star_tables(tmp_path / 'bad.star', {'x': {'a': ['it\' is "a" thing']}})


def test_missing_metadata_file(tmp_path):
    with pytest.raises(InputError, match='no such metadata file'):
        read_particles(tmp_path / 'absent.star')


def test_stack_round_trip_and_memory_map(tmp_path):
    images = np.random.default_rng(0).normal(size=(5, 16, 16)).astype(np.float32)
    write_stack(tmp_path / 's.mrcs', images, pixel_size=1.7)
    info = stack_info(tmp_path / 's.mrcs')
    assert (info.count, info.box) == (5, 16) and info.pixel_size == pytest.approx(1.7, abs=1e-4)
    mapped = read_stack(tmp_path / 's.mrcs')
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, images)


def test_map_round_trip(tmp_path):
    volume = np.random.default_rng(1).normal(size=(12, 12, 12)).astype(np.float32)
    write_map(tmp_path / 'm.mrc', volume, 2.0)
    data, pixel = read_image(tmp_path / 'm.mrc')
    assert np.array_equal(data, volume) and pixel == pytest.approx(2.0)


def test_stack_writer_streams_resumes_and_renames(tmp_path):
    images = np.random.default_rng(2).normal(size=(10, 8, 8)).astype(np.float32)
    path = tmp_path / 'out.mrcs'
    writer = StackWriter(path, 10, 8, 1.0)
    writer.write(0, images[:4])
    writer.abandon()  # the job dies here
    assert not path.exists() and (tmp_path / 'out.mrcs.partial').exists()
    with StackWriter(path, 10, 8, 1.0, resume=True) as writer:
        writer.write(4, images[4:])
    assert np.array_equal(read_stack(path), images)
    assert not (tmp_path / 'out.mrcs.partial').exists()


def test_failed_writing_keeps_the_previous_stack(tmp_path):
    old = np.ones((3, 8, 8), np.float32)
    write_stack(tmp_path / 'keep.mrcs', old, 1.0)
    with pytest.raises(ValueError):
        with StackWriter(tmp_path / 'keep.mrcs', 3, 8, 1.0) as writer:
            writer.write(0, np.zeros((5, 8, 8)))  # too many images: the writer refuses
    assert np.array_equal(read_stack(tmp_path / 'keep.mrcs'), old)
    with pytest.raises(ValueError):
        write_stack(tmp_path / 'keep.mrcs', np.zeros((8, 8)), 1.0)
    assert np.array_equal(read_stack(tmp_path / 'keep.mrcs'), old)
    assert sorted(os.listdir(tmp_path)) in (['keep.mrcs'], ['keep.mrcs', 'keep.mrcs.partial'])


def test_truncated_and_corrupt_stacks(tmp_path):
    write_stack(tmp_path / 'full.mrcs', np.zeros((4, 16, 16), np.float32), 1.0)
    data = (tmp_path / 'full.mrcs').read_bytes()
    (tmp_path / 'cut.mrcs').write_bytes(data[:-100])
    with pytest.raises(InputError, match=r'cut\.mrcs: truncated file: the header announces 4 images'):
        read_stack(tmp_path / 'cut.mrcs')
    (tmp_path / 'junk.mrcs').write_bytes(b'not an mrc file' * 100)
    with pytest.raises(InputError, match=r'junk\.mrcs: not a valid MRC file'):
        stack_info(tmp_path / 'junk.mrcs')
    with pytest.raises(InputError, match='no such image file'):
        read_stack(tmp_path / 'absent.mrcs')


def test_metadata_stack_count_mismatch(tmp_path):
    write_stack(tmp_path / 'stack.mrcs', np.zeros((5, 8, 8), np.float32), 1.0)
    particles = _particles(n=7)
    assert len(ImageSource(particles.image[:5], tmp_path)) == 5
    with pytest.raises(InputError, match=r'stack\.mrcs: image 7 requested but the stack holds 5 images'):
        ImageSource(particles.image, tmp_path)


def test_subset_keeps_rows_together():
    particles = _particles()
    part = particles.subset([4, 1])
    assert list(part.image) == [particles.image[4], particles.image[1]]
    np.testing.assert_array_equal(part.amplitudes, particles.amplitudes[[4, 1]])
    np.testing.assert_array_equal(part.extra['true_r'], particles.extra['true_r'][[4, 1]])


def _spider_header(nz, ny, nx, stack_count=0, image_number=0, order='<'):
    """A SPIDER header (float words, 1-based: 1 NZ, 2 NY, 5 IFORM, 12 NX, 22 LABBYT, 24 ISTACK, 26 MAXIM, 27 IMGNUM)
    of 1024 bytes, the header size of images at least 256 pixels wide or narrower than 256 / 4."""
    words = np.zeros(256)
    words[[0, 1, 4, 11, 21, 22]] = nz, ny, 3 if nz > 1 else 1, nx, 1024, nx * 4
    words[23], words[25], words[26] = (1, stack_count, image_number) if stack_count else (0, 0, image_number)
    return words.astype(f'{order}f4').tobytes()


@pytest.mark.parametrize('order', ['<', '>'])
def test_spider_stacks_images_and_volumes(tmp_path, order):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 16, 16)).astype(np.float32)
    stack = tmp_path / 'images.stk'
    stack.write_bytes(_spider_header(1, 16, 16, stack_count=4, order=order) + b''.join(
        _spider_header(1, 16, 16, image_number=i + 1, order=order) + image.astype(f'{order}f4').tobytes()
        for i, image in enumerate(images)))
    info = stack_info(stack)
    assert (info.count, info.box, info.pixel_size) == (4, 16, 0.0)
    np.testing.assert_array_equal(read_stack(stack)[[3, 1]], images[[3, 1]])
    np.testing.assert_array_equal(read_image(stack)[0], images[0])
    volume = rng.normal(size=(8, 16, 16)).astype(np.float32)
    (tmp_path / 'map.vol').write_bytes(_spider_header(8, 16, 16, order=order) + volume.astype(f'{order}f4').tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / 'map.vol')[0], volume)
    with pytest.raises(InputError, match='a SPIDER volume, not a stack'):
        read_stack(tmp_path / 'map.vol')
    stack.write_bytes(stack.read_bytes()[:-100])
    with pytest.raises(InputError, match='truncated file'):
        read_stack(stack)
    (tmp_path / 'text.spi').write_bytes(b'not an image' * 100)
    with pytest.raises(InputError, match='not a SPIDER image file'):
        read_stack(tmp_path / 'text.spi')


def test_spider_files_written_by_xmipp(tmp_path):
    """Xmipp's own writer (xmippLib, from the pyxmipp3 wheel that scipion-em installs): .stk, .spi and .vol."""
    import xmippLib
    rng = np.random.default_rng(2)
    images = rng.normal(size=(5, 24, 24)).astype(np.float32)
    for number, image in enumerate(images, start=1):
        writer = xmippLib.Image()
        writer.setData(image)
        writer.write(f'{number}@{tmp_path / "particles.stk"}')
    np.testing.assert_array_equal(read_stack(tmp_path / 'particles.stk'), images)
    writer = xmippLib.Image()
    writer.setData(images[2])
    writer.write(str(tmp_path / 'one.spi'))
    np.testing.assert_array_equal(read_stack(tmp_path / 'one.spi'), images[2:3])
    volume = rng.normal(size=(10, 12, 12)).astype(np.float32)
    writer = xmippLib.Image()
    writer.setData(volume)
    writer.write(str(tmp_path / 'map.vol'))
    np.testing.assert_array_equal(read_image(tmp_path / 'map.vol')[0], volume)


def test_image_source_reads_spider_stacks_and_format_hints(tmp_path):
    images = np.arange(3 * 16 * 16, dtype=np.float32).reshape(3, 16, 16)
    (tmp_path / 'particles.stk').write_bytes(_spider_header(1, 16, 16, stack_count=3) + b''.join(
        _spider_header(1, 16, 16, image_number=i + 1) + image.tobytes() for i, image in enumerate(images)))
    write_stack(tmp_path / 'more.mrc', images[::-1], 1.0)
    source = ImageSource(['3@particles.stk', '1@more.mrc:mrcs', '1@particles.stk:stk'], tmp_path)
    np.testing.assert_array_equal(source.read([0, 1, 2]), images[[2, 2, 0]])


def test_spider_trailing_bytes_are_ignored(tmp_path):
    image = np.arange(256, dtype=np.float32).reshape(16, 16)
    (tmp_path / 'odd.spi').write_bytes(_spider_header(1, 16, 16) + image.tobytes() + b'\x00\x01')
    np.testing.assert_array_equal(read_stack(tmp_path / 'odd.spi')[0], image)

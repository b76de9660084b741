# -*- coding: utf-8 -*-
"""
@article{Hamitouche2022,
title = {DeepHEMNMA: ResNet-based hybrid analysis of continuous conformational heterogeneity in cryo-EM single particle images},
journal = {Frontiers in Molecular Biosciences},
volume = {9},
pages = {965645},
year = {2022},
doi = {10.3389/fmolb.2022.965645},
author = {Hamitouche, Ilyes and Jonic, Slavica}
}

@article{Jin2014,
title = {Iterative elastic 3D-to-2D alignment method using normal modes for studying structural dynamics of large macromolecular complexes},
journal = {Structure},
volume = {22},
number = {3},
pages = {496--506},
year = {2014},
doi = {10.1016/j.str.2014.01.004},
author = {Jin, Qiyu and Sorzano, Carlos Oscar S. and de la Rosa-Trevin, Jose Miguel and Bilbao-Castro, Jose Roman and Nunez-Ramirez, Rafael and Llorca, Oscar and Tama, Florence and Jonic, Slavica}
}

@article{Harastani2020,
title = {Hybrid electron microscopy normal mode analysis with Scipion},
journal = {Protein Science},
volume = {29},
number = {1},
pages = {223--236},
year = {2020},
doi = {10.1002/pro.3772},
author = {Harastani, Mohamad and Sorzano, Carlos Oscar S. and Jonic, Slavica}
}

@inproceedings{Rupprecht2017,
title = {Learning in an uncertain world: representing ambiguity through multiple hypotheses},
booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
pages = {3591--3600},
year = {2017},
author = {Rupprecht, Christian and Laina, Iro and DiPietro, Robert and Baust, Maximilian and Tombari, Federico and Navab, Nassir and Hager, Gregory D.}
}

@inproceedings{He2016,
title = {Deep residual learning for image recognition},
booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
pages = {770--778},
year = {2016},
doi = {10.1109/CVPR.2016.90},
author = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian}
}

@article{Tirion1996,
title = {Large amplitude elastic motions in proteins from a single-parameter, atomic analysis},
journal = {Physical Review Letters},
volume = {77},
number = {9},
pages = {1905--1908},
year = {1996},
doi = {10.1103/PhysRevLett.77.1905},
author = {Tirion, Monique M.}
}

@article{Peng1996,
title = {Robust parameterization of elastic and absorptive electron atomic scattering factors},
journal = {Acta Crystallographica Section A},
volume = {52},
number = {2},
pages = {257--276},
year = {1996},
doi = {10.1107/S0108767395014371},
author = {Peng, L.-M. and Ren, G. and Dudarev, S. L. and Whelan, M. J.}
}

@article{Jonic2016,
title = {Coarse-graining of volumes for modeling of structure and dynamics in electron microscopy: algorithm to automatically control accuracy of approximation},
journal = {IEEE Journal of Selected Topics in Signal Processing},
volume = {10},
number = {1},
pages = {161--173},
year = {2016},
doi = {10.1109/JSTSP.2015.2489186},
author = {Jonic, Slavica and Sorzano, Carlos Oscar S.}
}
"""

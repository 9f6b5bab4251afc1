"""mmLiT: masked-autoencoder pre-training of mLiT encoders, and the hand-off of the encoder to timm."""
from .model import MAEOutput, MaskedAutoencoder, create_mae, patchify, random_masking, unpatchify

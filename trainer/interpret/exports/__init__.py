"""The interpreted latents' activations written in other tools' layouts (`delphi`)."""

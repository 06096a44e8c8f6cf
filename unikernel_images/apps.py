from django.apps import AppConfig


class UnikernelImagesConfig(AppConfig):
    name = "unikernel_images"
    verbose_name = "Images and runtimes"

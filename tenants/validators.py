"""Hooks on Django's password validation."""


class RevokeTokensOnPasswordChange:
    """When an account's password changes (a reset by email, say), the API tokens
    made with the old one stop working: whoever had the old password may have made
    one. Django calls `password_changed` of every configured validator after
    set_password() is saved; there is nothing to validate."""

    def validate(self, password, user=None) -> None:
        return None

    def password_changed(self, password, user=None) -> None:
        from tenants.models import ApiToken

        if user is not None and user.pk is not None:
            ApiToken.objects.filter(account__user=user).delete()

    def get_help_text(self) -> str:
        return ""
